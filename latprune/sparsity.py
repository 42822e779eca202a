"""Unstructured global magnitude sparsity: zero the smallest weights across the whole network."""

from __future__ import annotations

import torch
import torch.nn as nn

from latprune.errors import LatpruneError

SPARSIFIED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def global_magnitude_sparsify(model: nn.Module, sparsity: float) -> dict[str, float]:
    """Zero the ``sparsity`` fraction of conv and linear weights with the smallest magnitude, in place.

    One threshold for the whole network (global), so layers lose different fractions;
    biases and BatchNorm parameters are untouched. Returns each layer's resulting sparsity.
    """
    if not 0.0 <= sparsity < 1.0:
        raise LatpruneError(f"sparsity must be in [0, 1), got {sparsity}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, SPARSIFIED)}
    if not layers:
        raise LatpruneError("the model has no convolution or linear layers to sparsify")
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
    count = int(round(sparsity * magnitudes.numel()))
    if count == 0:
        return {name: 0.0 for name in layers}
    threshold = torch.kthvalue(magnitudes, count).values
    result = {}
    with torch.no_grad():
        for name, m in layers.items():
            m.weight.mul_((m.weight.abs() > threshold).to(m.weight.dtype))
            result[name] = float((m.weight == 0).float().mean())
    return result


def weight_sparsity(model: nn.Module) -> float:
    """The fraction of zero weights over all conv and linear layers."""
    weights = [m.weight.detach().flatten() for m in model.modules() if isinstance(m, SPARSIFIED)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0
