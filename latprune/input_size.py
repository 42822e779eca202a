"""A network run at a smaller input size than its own: fewer pixels through every layer, no channel removed.

On ort-cpu, EfficientNet-Lite0 at 192x192 ran at 0.766 of itself at 224x224 and kept 84.3% top-1 of 87.2%, where
every widths-only plan near that latency kept 81.8-83.6% (docs/planning.md). ``latprune run --input-size`` takes
that lever with the widths: the dense network at the smaller size is timed against the dense network at its own
size (paired, same rounds), and the widths are planned at the smaller size, the first plan for what is left of the
budget. Every claim keeps its reference: the closed loop and the final measurement time the plans against the dense
network at its own input size, and top-1 compares with it at its own preprocessing.

The images are resized so that the crop keeps the field of view of the model's own preprocessing (a 256 resize
and 224 crop become 219 and 192), so objects keep their share of the picture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from latprune.budget import BudgetRequest
from latprune.errors import LatpruneError
from latprune.network import PairedRatio
from latprune.preprocessing import Preprocessing

if TYPE_CHECKING:
    from latprune.models import LoadedModel
    from latprune.size_adaptation import Adaptation

MIN_SIZE = 8  # pixels on the shorter side; below this a network's strided layers run out of image


def input_shape_at(native_shape: Sequence[int], size: int) -> tuple[int, ...]:
    """``native_shape`` with its shorter spatial side at ``size`` and the other scaled alike (aspect kept)."""
    height, width = int(native_shape[-2]), int(native_shape[-1])
    scale = size / min(height, width)
    return (*(int(d) for d in native_shape[:-2]), max(1, round(height * scale)), max(1, round(width * scale)))


def check_input_size(size: int, native_shape: Sequence[int]) -> None:
    """Refuse a size that is not smaller than the model's own input or too small to run."""
    shorter = min(int(native_shape[-2]), int(native_shape[-1]))
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size < shorter:
        raise LatpruneError(f"--input-size must be a whole number of pixels from {MIN_SIZE} to {shorter - 1} (smaller "
                            f"than the model's input {'x'.join(map(str, native_shape[-2:]))}), got {size!r}")


def preprocessing_at(preprocessing: Preprocessing, native_shape: Sequence[int], size: int) -> dict:
    """The preprocessing parts to replace for ``size`` (``load``'s mapping): the resize scaled like the crop."""
    if preprocessing.exact:
        raise LatpruneError(f"a smaller input size needs images that are resized and cropped, but this model takes "
                            f"images as they are at {'x'.join(map(str, native_shape[-2:]))}: give its resize with "
                            f"--resize")
    shorter = min(int(native_shape[-2]), int(native_shape[-1]))
    return {"resize": max(size, round(preprocessing.resize_to(native_shape) * size / shorter))}


def load_at_size(native: LoadedModel, weights: str | None, size: int,
                 preprocessing: Mapping[str, Any] | None = None) -> LoadedModel:
    """The model of ``native`` loaded again at ``size`` on the shorter side, built for that size where its factory
    takes the input shape, its images resized so that the crop keeps the field of view (``preprocessing``: the
    parts given for the model at its own size)."""
    from latprune.models import load_model

    return load_model(native.spec, weights=weights, input_shape=input_shape_at(native.input_shape, size),
                      preprocessing={**(preprocessing or {}),
                                     **preprocessing_at(native.preprocessing, native.input_shape, size)})


@dataclass(frozen=True)
class InputSize:
    """The input size a run planned at, and the dense network's latency there relative to its own input size
    (paired: timed in the same rounds)."""

    native_input_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    dense_ratio: PairedRatio
    native_preprocessing: str  # how the reference's images are made (the sized run's own are in its plan)
    adaptation: Adaptation | None = None  # the network at this size taught its outputs at its own size first

    def request(self, asked: BudgetRequest) -> BudgetRequest:
        """What the widths must still give at this size, as the planner's first aim: a speedup times the dense
        ratio (1.5x at 0.766 leaves 1.15x); a budget in milliseconds is one at any size. The closed loop then
        judges each plan against the dense network at its own size (:class:`~latprune.settings.LoopReference`).
        Refused when the size alone meets the speedup."""
        if asked.speedup is None:
            return asked
        left = asked.speedup * self.dense_ratio.ratio
        if left <= 1.0:
            ratio = self.dense_ratio
            raise LatpruneError(
                f"at {self.size_text} the dense network alone runs at {ratio.ratio:.3f} of its latency at "
                f"{self.native_text} (paired, 95% interval {ratio.low:.3f}-{ratio.high:.3f}), which meets --speedup "
                f"{asked.speedup:g} without pruning a channel: give a larger --input-size, or run the dense network "
                f"at this size")
        return dataclasses.replace(asked, speedup=left)

    @property
    def size_text(self) -> str:
        return _hw(self.input_shape)

    @property
    def native_text(self) -> str:
        return _hw(self.native_input_shape)

    def describe(self) -> str:
        return (f"planned at input size {self.size_text} (the model's own: {self.native_text}): the dense network "
                f"there runs at {self.dense_ratio.describe()}; the latency and top-1 reference is the dense network at "
                f"{self.native_text}, preprocessing {self.native_preprocessing}"
                + ("" if self.adaptation is None else f"; before planning, {self.adaptation.describe()}"))

    def to_json(self) -> dict:
        return {"native_input_shape": list(self.native_input_shape), "input_shape": list(self.input_shape),
                "dense_ratio": self.dense_ratio.to_json(), "native_preprocessing": self.native_preprocessing,
                "adaptation": None if self.adaptation is None else self.adaptation.to_json()}


def _hw(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape[-2:])
