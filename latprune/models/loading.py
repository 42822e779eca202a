"""Load a model from a spec string, the same way in the CLI and the Python API.

Specs:
- ``torchvision:<name>``: a torchvision classification model, randomly initialised;
- ``cifar:resnet20|32|44|56|110``: CIFAR-10 ResNets with option-A shortcuts;
- ``<python.module>:<callable>``: a user's factory returning an ``nn.Module``.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.nn as nn

from latprune.errors import LatpruneError
from latprune.models.cifar_resnet import DEPTHS, cifar_resnet
from latprune.models.memory import check_memory
from latprune.preprocessing import Preprocessing, of_model

DEFAULT_INPUT_SHAPES = {
    "torchvision": (1, 3, 224, 224),
    "cifar": (1, 3, 32, 32),
    "custom": (1, 3, 224, 224),
}


@dataclass
class LoadedModel:
    """A model in eval mode together with what is needed to trace and rebuild it."""

    model: nn.Module
    spec: str
    family: str
    input_shape: tuple[int, ...]
    weights: str | None = None  # the weights file loaded, if any (absolute path)
    preprocessing: Preprocessing | None = None  # None: the family's default (set when made)

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            self.preprocessing = Preprocessing.for_family(self.family)

    def example_input(self, seed: int = 0) -> torch.Tensor:
        """A deterministic random input of the model's input shape."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(self.input_shape, generator=generator)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``1x3x224x224`` (or ``1,3,224,224``) into a shape tuple."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise LatpruneError(f"input shape {text!r} is not of the form NxCxHxW, e.g. 1x3x224x224") from None
    if len(shape) != 4 or min(shape) < 1:
        raise LatpruneError(f"input shape {text!r} must have four positive sizes NxCxHxW")
    return shape


def _torchvision_factory(name: str) -> Callable[[], nn.Module]:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise LatpruneError(f"unknown torchvision classification model {name!r}{hint}")
    return lambda: torchvision.models.get_model(name, weights=None)


def _cifar_factory(name: str) -> Callable[[], nn.Module]:
    if name not in DEPTHS:
        raise LatpruneError(f"unknown CIFAR model {name!r}; choose one of {', '.join(DEPTHS)}")
    return lambda: cifar_resnet(name)


def _custom_factory(module_name: str, attr: str) -> Callable[[], nn.Module]:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, SyntaxError, or anything the module raises while loading
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LatpruneError(f"cannot import module {module_name!r} for model spec: {type(exc).__name__}: "
                            f"{text}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise LatpruneError(f"module {module_name!r} has no callable {attr!r}")
    return factory


BUILTIN_FAMILIES = ("torchvision", "cifar")


def is_builtin_spec(spec: str) -> bool:
    """Whether ``spec`` names a model latprune builds itself (no user code is imported)."""
    family, sep, name = spec.partition(":")
    return bool(sep and name) and family in BUILTIN_FAMILIES


def spec_family(spec: str) -> str:
    """The family a spec belongs to (``torchvision``, ``cifar`` or ``custom``), without loading anything."""
    family = spec.partition(":")[0]
    return family if family in BUILTIN_FAMILIES else "custom"


def default_input_shape(spec: str) -> tuple[int, ...]:
    """The input shape a spec gets without ``--input-shape`` where it is known without building the model
    (a custom factory's model may declare its own)."""
    if spec == "torchvision:inception_v3":
        return (1, 3, 299, 299)
    return DEFAULT_INPUT_SHAPES[spec_family(spec)]


def check_spec_named(spec: str, named: str | None, source: str) -> None:
    """Refuse to import user code that a file names (``source``) unless the user named the same spec.

    Built-in specs import nothing of the user's; a ``module:callable`` spec read from a file would run
    whatever that module's import and that callable do, so it needs ``--model`` with the same spec."""
    if is_builtin_spec(spec) or spec == named:
        return
    raise LatpruneError(f"{source} names the model factory {spec!r}; latprune imports code that a file names only "
                        f"when you name the same spec: --model {spec}")


def _factory_for(spec: str) -> tuple[str, Callable[[], nn.Module]]:
    family, sep, name = spec.partition(":")
    if not sep or not family or not name:
        raise LatpruneError(
            f"unknown model spec {spec!r}; use torchvision:<name>, cifar:<resnetN> or <module>:<callable>"
        )
    if family == "torchvision":
        return family, _torchvision_factory(name)
    if family == "cifar":
        return family, _cifar_factory(name)
    return "custom", _custom_factory(family, name)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save``, safely (``weights_only=True``).

    Accepts a bare state dict or a checkpoint dict holding one under ``state_dict``
    or ``model``; strips the ``module.`` prefix that ``DataParallel`` adds.
    """
    if not os.path.isfile(path):
        raise LatpruneError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or unsafe files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatpruneError(f"cannot read weights from {path} as a PyTorch state dict: {first_line}") from None
    if isinstance(obj, dict) and obj.get("format") == "latprune-pruned-model":
        raise LatpruneError(f"{path} is a latprune pruned model; pass it with --pruned, not --weights")
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LatpruneError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str, target: str) -> None:
    """Load ``state`` strictly, turning any mismatch into a one-line error."""
    own = model.state_dict()
    # Checkpoints from PyTorch < 0.4.1 lack BatchNorm's step counter; it does not affect eval.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            details.append(
                f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise LatpruneError(f"weights {source} do not fit {target}: {'; '.join(details)}")
    model.load_state_dict(state, strict=True)


def load_model(
    spec: str,
    weights: str | os.PathLike | None = None,
    input_shape: tuple[int, ...] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Build the model named by ``spec`` in eval mode, optionally loading ``weights``. Its image preprocessing is
    what the model states (``latprune_preprocessing``) or its family's default, with the parts given in
    ``preprocessing`` (mean, std, resize: ``--mean/--std/--resize``) replaced."""
    family, factory = _factory_for(spec)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # a factory's prints never mix into a command's --json output
            model = factory(**_shape_argument(factory, input_shape))
    except LatpruneError:
        raise
    except Exception as exc:
        raise LatpruneError(f"model factory for {spec!r} failed: {exc}") from None
    if not isinstance(model, nn.Module):
        raise LatpruneError(f"model factory for {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        apply_state_dict(model, load_state_dict_file(weights), str(weights), spec)
    shape = tuple(input_shape) if input_shape else _default_input_shape(family, spec, model)
    check_memory(model, spec, shape)
    images = of_model(model, family, spec).with_options(**(preprocessing or {}))  # (channels checked when read)
    return LoadedModel(model=model.eval(), spec=spec, family=family, input_shape=shape,
                       weights=os.path.abspath(weights) if weights is not None else None, preprocessing=images)


def _shape_argument(factory: Callable[..., nn.Module], input_shape: tuple[int, ...] | None) -> dict:
    """``{"input_shape": ...}`` for a factory that takes the shape asked for (a network whose static "same" padding
    is computed for its input size, as TensorFlow ports do, is built for that size); else nothing."""
    if input_shape is None:
        return {}
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        return {}
    taken = parameters.get("input_shape")
    if taken is None or taken.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
        return {}
    return {"input_shape": tuple(int(d) for d in input_shape)}


def _default_input_shape(family: str, spec: str, model: Any) -> tuple[int, ...]:
    declared = getattr(model, "input_shape", None)
    if declared is not None:
        return tuple(int(s) for s in declared)
    return default_input_shape(spec)
