"""Where a group's channels live in each layer, and masking them without changing shapes.

``group_layout`` maps every root-relative channel of a group to the matching weight rows
(producers: output channels, BN included) and columns (consumers: input channels) of
each layer, through concatenations. Masking zeroes a group's removed channels at every
producer's output, which makes the dense network compute exactly what the physically
pruned one computes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from latprune.graph import LayerSlice, layer_slices
from latprune.network import run_model

if TYPE_CHECKING:
    from latprune.groups import ChannelGroup

Layout = dict[str, list[LayerSlice]]


def group_layout(model: nn.Module, graph: tp.DependencyGraph, groups: Sequence["ChannelGroup"]) -> Layout:
    """For each group, every named layer's channel indices, in root-relative order (``graph``: ``model``'s)."""
    return layer_slices(model, graph, {g.id: list(range(g.width)) for g in groups})


def weight_rows(module: nn.Module, layer_slice: LayerSlice) -> torch.Tensor | None:
    """The layer's weights for the slice's channels, one row per channel (None for weightless layers)."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    w = weight.detach()
    if layer_slice.side == "out":
        rows = w[list(layer_slice.idxs)]
    else:
        if w.dim() < 2:  # BN and other per-channel parameters are producers only
            return None
        rows = w.transpose(0, 1)[list(layer_slice.idxs)]
    return rows.reshape(len(layer_slice.idxs), -1)


@contextmanager
def masked_channels(model: nn.Module, layout: Layout, removed: Mapping[str, Sequence[int]]) -> Iterator[None]:
    """Within the block, removed channels (root-relative, per group) output zero at every producer."""
    modules = dict(model.named_modules())
    hooks = []
    for gid, idxs in removed.items():
        if not len(idxs):
            continue
        idxs = np.asarray(idxs)
        for s in layout[gid]:
            if s.side != "out":
                continue
            layer_idxs = torch.as_tensor(np.asarray(s.idxs)[idxs])
            hooks.append(modules[s.layer].register_forward_hook(_zeroing_hook(layer_idxs)))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _zeroing_hook(idxs: torch.Tensor):
    def hook(module, inputs, output):
        output = output.clone()
        output[:, idxs] = 0
        return output

    return hook


# Pruned and masked networks differ by float rounding only; an op that moves channels unseen
# (an inline permutation) differs by the size of the activations themselves.
MASKED_TOLERANCE = 1e-4


def masked_mismatch(pruned: nn.Module, dense: nn.Module, layout: Layout, removed: Mapping[str, Sequence[int]],
                    example_input: torch.Tensor) -> str | None:
    """Why ``pruned`` does not compute what ``dense`` computes with the ``removed`` channels masked (None when it
    does, to within rounding): the check that an op moving channels unseen did not make a different network."""
    with masked_channels(dense, layout, removed):
        expected = run_model(dense, example_input)
    got = run_model(pruned, example_input)
    if got.shape != expected.shape:
        return f"output shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    difference = float((got.double() - expected.double()).abs().max()) if expected.numel() else 0.0
    if not difference <= MASKED_TOLERANCE * max(scale, 1.0):  # NaN fails too
        return (f"output differs from the dense model with those channels masked by {difference:.3g} "
                f"(output scale {scale:.3g})")
    return None
