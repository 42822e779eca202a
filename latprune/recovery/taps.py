"""Where recovery compares a pruned network with its dense original.

A *tap* is one layer's normalised output: a convolution or linear layer, or the
BatchNorm that directly follows it. Recovery matches the pruned network's tap outputs to
the dense network's at the channels the pruned network kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from latprune.channels import Layout
from latprune.groups import ChannelGroup

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class Tap:
    """A weighted layer and the BatchNorm fed by it alone (None when there is none)."""

    layer: str
    norm: str | None

    @property
    def output(self) -> str:
        return self.norm or self.layer


def forward_once(model: nn.Module, example_input: torch.Tensor) -> None:
    """One eval-mode forward pass without gradients (for hooks to observe); the training mode is restored."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)


def find_taps(model: nn.Module, example_input: torch.Tensor) -> list[Tap]:
    """Every conv/linear layer in execution order, paired with the BatchNorm reading its output."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, WEIGHTED + NORMS)}
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # keeps tensors alive so ids stay unique

    def record(module, inputs, output):
        calls.append((names[module], inputs[0], output))

    hooks = [m.register_forward_hook(record) for m in names]
    try:
        forward_once(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    producer_of = {id(out): name for name, _, out in calls if isinstance(modules[name], WEIGHTED)}
    norm_of: dict[str, str] = {}
    for name, inp, _ in calls:
        source = producer_of.get(id(inp))
        if isinstance(modules[name], NORMS) and source is not None and source not in norm_of:
            norm_of[source] = name
    seen: set[str] = set()
    taps = []
    for name, _, _ in calls:
        if isinstance(modules[name], WEIGHTED) and name not in seen:
            seen.add(name)
            taps.append(Tap(name, norm_of.get(name)))
    return taps


def kept_output_channels(
    layout: Layout, groups: Sequence[ChannelGroup], kept: Mapping[str, Sequence[int]]
) -> dict[str, torch.Tensor]:
    """For each layer producing a pruned group, the dense output channels that survive, in order.

    ``layout`` is :func:`latprune.channels.group_layout` of (at least) the pruned groups.
    Layers missing from the result keep all their output channels.
    """
    result = {}
    for group in groups:
        if group.id not in kept:
            continue
        root_kept = np.asarray(sorted(int(i) for i in kept[group.id]), dtype=np.int64)
        for s in layout[group.id]:
            if s.side == "out":
                result[s.layer] = torch.as_tensor(np.sort(np.asarray(s.idxs)[root_kept]))
    return result


def select_channels(output: torch.Tensor, channels: torch.Tensor | None) -> torch.Tensor:
    return output if channels is None else output.index_select(1, channels)


@contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, ``captured[name]`` holds the latest output of each named module."""
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def hook_for(name):
        def hook(module, inputs, output):
            captured[name] = output

        return hook

    hooks = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()


class _Stop(Exception):
    pass


def layer_input(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The input of layer ``name`` for ``x``, running the network only as far as that layer."""
    captured = []

    def hook(module, inputs):
        captured.append(inputs[0])
        raise _Stop

    handle = dict(model.named_modules())[name].register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"layer {name} was not called in the forward pass")
    return captured[0]
