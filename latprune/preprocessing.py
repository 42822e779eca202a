"""How images become a model's input: its author's preprocessing, not one assumed for every model.

A :class:`Preprocessing` resizes the shorter side and centre-crops to the input size (or takes
images as they are, for CIFAR models), then maps pixels in [0, 1] by ``(x - mean) / std`` per
channel. Each model family has a default; a model from elsewhere states its own with
``--mean/--std/--resize``, or with a ``latprune_preprocessing`` attribute on the model its factory
returns (``{"mean": [...], "std": [...], "resize": 256}``). Calibration, evaluation, ``run`` and
the report use it, and plans and pruned files record it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from latprune.errors import LatpruneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # without a stated resize, the shorter side is resized to input / 0.875 (torchvision's)
MODEL_ATTRIBUTE = "latprune_preprocessing"


@dataclass(frozen=True)
class Preprocessing:
    """Resize + centre crop (or ``exact``: images must have the input size already), then per-channel
    ``(x - mean) / std`` on pixels in [0, 1]; ``resize``: the shorter side before the crop (None: input / 0.875)."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: int | None = None
    exact: bool = False

    def __post_init__(self) -> None:
        for name, values in (("mean", self.mean), ("std", self.std)):
            if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                     for v in values):
                raise LatpruneError(f"preprocessing {name} must be finite numbers, got {list(values)!r}")
        if len(self.mean) != len(self.std):
            raise LatpruneError(f"preprocessing has {len(self.mean)} means but {len(self.std)} standard deviations")
        if min(self.std) <= 0:
            raise LatpruneError(f"preprocessing std must be positive, got {list(self.std)}")
        if self.resize is not None and (isinstance(self.resize, bool) or not isinstance(self.resize, int)
                                        or self.resize < 1):
            raise LatpruneError(f"preprocessing resize must be a positive integer, got {self.resize!r}")
        if self.exact and self.resize is not None:
            raise LatpruneError("preprocessing: images taken as they are (exact) cannot also be resized")

    @classmethod
    def for_family(cls, family: str) -> "Preprocessing":
        """The family's default: CIFAR models take 32x32 images as they are; others resize and crop."""
        return cls(exact=family == "cifar")

    def with_options(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     resize: int | None = None) -> "Preprocessing":
        """This preprocessing with the given parts replaced (a resize also means images are no longer exact)."""
        changes: dict[str, Any] = {}
        if mean is not None:
            changes["mean"] = tuple(float(v) for v in mean)
        if std is not None:
            changes["std"] = tuple(float(v) for v in std)
        if resize is not None:
            changes.update(resize=resize, exact=False)
        return dataclasses.replace(self, **changes)

    def check_channels(self, input_shape: Sequence[int]) -> None:
        channels = input_shape[1]
        if len(self.mean) not in (1, channels):
            raise LatpruneError(f"preprocessing has {len(self.mean)} means for a model of {channels} input channels")

    def exact_size(self, input_shape: Sequence[int]) -> tuple[int, int] | None:
        """The (height, width) images must already have, or None where they are resized and cropped."""
        return (int(input_shape[-2]), int(input_shape[-1])) if self.exact else None

    def resize_to(self, input_shape: Sequence[int]) -> int:
        return self.resize or int(round(min(input_shape[-2:]) / CROP_FRACTION))

    def transform(self, input_shape: Sequence[int], before: Sequence = ()):
        """The torchvision transform for images of this model (``before``: steps on the decoded image first)."""
        from torchvision import transforms

        self.check_channels(input_shape)
        height, width = int(input_shape[-2]), int(input_shape[-1])
        steps = [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        if self.exact:
            return transforms.Compose([*before, *steps])
        return transforms.Compose([*before, transforms.Resize(self.resize_to(input_shape)),
                                   transforms.CenterCrop((height, width)), *steps])

    def describe(self, input_shape: Sequence[int]) -> str:
        size = (f"taken as they are ({input_shape[-2]}x{input_shape[-1]})" if self.exact else
                f"resized to {self.resize_to(input_shape)}, centre crop {input_shape[-2]}x{input_shape[-1]}")
        return (f"{size}; (x - ({', '.join(f'{v:g}' for v in self.mean)})) / "
                f"({', '.join(f'{v:g}' for v in self.std)})")

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "resize": self.resize, "exact": self.exact}

    @classmethod
    def from_json(cls, data: Any, source: str, base: "Preprocessing | None" = None) -> "Preprocessing":
        """From a JSON object (a file's record or a model's attribute); absent parts are ``base``'s."""
        if not isinstance(data, Mapping):
            raise LatpruneError(f"{source}: preprocessing must be an object with mean, std and resize")
        unknown = sorted(set(data) - {"mean", "std", "resize", "exact"})
        if unknown:
            raise LatpruneError(f"{source}: preprocessing has unknown field {unknown[0]!r}")
        base = base or cls()
        values: dict[str, Any] = {}
        for name in ("mean", "std"):
            if name in data:
                if not isinstance(data[name], (list, tuple)):
                    raise LatpruneError(f"{source}: preprocessing {name} must be a list of numbers")
                values[name] = tuple(data[name])
        if "exact" in data:
            if not isinstance(data["exact"], bool):
                raise LatpruneError(f"{source}: preprocessing exact must be true or false")
            values["exact"] = data["exact"]
        if "resize" in data:
            values["resize"] = data["resize"]
            if data["resize"] is not None and "exact" not in data:
                values["exact"] = False
        try:
            return dataclasses.replace(base, **values)
        except LatpruneError as exc:
            raise LatpruneError(f"{source}: {exc}") from None


def as_preprocessing(value: "Preprocessing | str") -> Preprocessing:
    """A preprocessing, or a family name's default."""
    return value if isinstance(value, Preprocessing) else Preprocessing.for_family(value)


def of_model(model: Any, family: str, spec: str) -> Preprocessing:
    """What the model states with its ``latprune_preprocessing`` attribute, else the family's default."""
    stated = getattr(model, MODEL_ATTRIBUTE, None)
    base = Preprocessing.for_family(family)
    return base if stated is None else Preprocessing.from_json(stated, f"{spec}'s {MODEL_ATTRIBUTE}", base)
