"""The network's output layer refitted in closed form to the dense network's outputs, after a reconstruction.

Two-stage moves every layer by small Adam steps. Where pruning changed much of what the output layer reads, those
steps leave the outputs off in scale: on cifar resnet56 with its last residual block removed, the logits came out of
two-stage at about half the dense network's norm (10.2 against 19.7) and top-1 at 73.9% (dense 83.2%); the
classifier refitted by least squares to the dense logits on the same calibration images took it to 77.5%, while a
plan keeping that block stayed where it was (77.3%). So a reconstruction ends with this refit: the layer whose output
is the network's output (a linear layer with a bias), ridge least squares from its inputs in the pruned network to
the dense network's outputs, kept only where it lowers the output error on calibration images left out of the fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from latprune.batching import batch_size_for, forward_in_batches
from latprune.memory_format import channels_last
from latprune.recovery.ridge import ridge_solution
from latprune.recovery.taps import layer_input

HELD_OUT_EVERY = 4  # every fourth calibration image checks the fit instead of joining it


@dataclass(frozen=True)
class OutputRefit:
    """What the refit did: the layer (None when the network's output is not a linear layer's), whether its weights
    were replaced, why not where they were not, and the relative squared output error on the held-out images before
    and after the fit."""

    layer: str | None
    applied: bool
    reason: str = ""
    error_before: float | None = None
    error_after: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


def output_layer(model: nn.Module, example: torch.Tensor) -> str | None:
    """The name of the linear layer whose output the network returns unchanged, or None."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    outputs: dict[str, torch.Tensor] = {}

    def record(module, given, output) -> None:
        outputs[names[module]] = output

    hooks = [m.register_forward_hook(record) for m in names]
    try:
        model.eval()
        with torch.no_grad():
            result = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return next((name for name, out in outputs.items() if out is result), None)


def refit_output_layer(pruned: nn.Module, dense: nn.Module, calib: torch.Tensor, ridge: float) -> OutputRefit:
    """Refit ``pruned``'s output layer (in place) toward ``dense``'s outputs on ``calib``; see the module's text."""
    name = output_layer(pruned, calib[:2])
    if name is None:
        return OutputRefit(None, False, "the network's output is not a linear layer's")
    layer = dict(pruned.named_modules())[name]
    if layer.bias is None:
        return OutputRefit(name, False, "the layer has no bias to take the fitted shift")
    fitted = len(calib) - len(range(0, len(calib), HELD_OUT_EVERY))
    if 2 * (layer.in_features + 1) > fitted:
        return OutputRefit(name, False, f"{fitted} calibration images are too few to fit its "
                                        f"{layer.in_features} inputs")
    features = _features(pruned, name, calib)
    if features.dim() != 2:
        return OutputRefit(name, False, "the layer reads more than one feature vector per image")
    current = F.linear(features, layer.weight.detach().double(), layer.bias.detach().double())
    target = forward_in_batches(dense.eval(), calib).double()
    if target.shape != current.shape:
        return OutputRefit(name, False, f"the dense network's outputs have shape {tuple(target.shape[1:])}, the "
                                        f"pruned network's {tuple(current.shape[1:])}")
    held = torch.arange(len(features)) % HELD_OUT_EVERY == 0
    weight, shift = ridge_solution(features[~held], target[~held], ridge)
    before = _relative_error(current[held], target[held])
    after = _relative_error(features[held] @ weight.T + shift, target[held])
    if not after < before:
        return OutputRefit(name, False, "no better on the held-out images", before, after)
    weight, shift = ridge_solution(features, target, ridge)
    with torch.no_grad():
        layer.weight.copy_(weight.to(layer.weight.dtype))
        layer.bias.copy_(shift.to(layer.bias.dtype))
    return OutputRefit(name, True, "", before, after)


def _features(model: nn.Module, name: str, calib: torch.Tensor) -> torch.Tensor:
    """The inputs of layer ``name`` on ``calib``, in double precision."""
    model.eval()
    with torch.no_grad(), channels_last(model, example=calib) as layout:
        return torch.cat([layer_input(model, name, layout(batch))
                          for batch in calib.split(batch_size_for(calib.shape))]).double()


def _relative_error(output: torch.Tensor, target: torch.Tensor) -> float:
    return float((output - target).square().sum() / target.square().sum().clamp_min(1e-12))
