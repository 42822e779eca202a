"""The single place that talks to Torch-Pruning's dependency graph.

Everything here works in terms of *root layer names*: a channel group is named by the
conv/linear layer whose output channels define it (Torch-Pruning's root), and channels
are removed by naming that root and the root-relative indices to drop.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from latprune.channel_ops import CUSTOM_PRUNERS, opaque_channel_maps
from latprune.errors import LatpruneError
from latprune.network.tracing import first_line, run_model

ROOT_TYPES = (nn.Conv2d, nn.Conv1d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class RawGroup:
    """One Torch-Pruning group before any prunability check."""

    root: str
    width: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    divisor: int


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` into a dependency graph, as a user-facing error if it cannot be traced.

    Parameter-free channel ops wrapped as :class:`~latprune.channel_ops.ChannelMap` are layers to
    Torch-Pruning, with their input and output channels pruned independently.
    """
    try:
        with warnings.catch_warnings(), torch.enable_grad(), opaque_channel_maps():  # tracing follows autograd
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input,
                                                         customized_pruners=CUSTOM_PRUNERS)
    except Exception as exc:
        raise LatpruneError(f"cannot trace the model's channel dependencies: {first_line(exc)}") from None


def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """Conv/linear layers whose output tensor is the network's output (the classifier)."""
    outputs: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _inp, out: outputs.__setitem__(mod, out))
        for m in model.modules()
        if isinstance(m, ROOT_TYPES)
    ]
    try:
        final = run_model(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    return [m for m, out in outputs.items() if out is final]


def _channel_divisor(module: nn.Module) -> int:
    """How many equal slices a grouped (non-depthwise) layer splits its channels into."""
    if isinstance(module, nn.modules.conv._ConvNd) and ops.module2type(module) != ops.OPTYPE.DEPTHWISE_CONV:
        return module.groups
    if isinstance(module, nn.GroupNorm):
        return module.num_groups
    return 1


def raw_groups(model: nn.Module, graph: tp.DependencyGraph, ignored: Sequence[nn.Module]) -> list[RawGroup]:
    """All groups Torch-Pruning finds with a conv/linear root, minus those touching ``ignored``."""
    names = {m: n for n, m in model.named_modules()}
    found = []
    for group in graph.get_all_groups(ignored_layers=list(ignored), root_module_types=ROOT_TYPES):
        root_module = group[0].dep.target.module
        producers: list[str] = []
        consumers: list[str] = []
        divisor = 1
        for item in group:
            module = item.dep.target.module
            if module not in names:  # functional ops (add, cat, ...) have no name
                continue
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                producers.append(names[module])
            else:
                consumers.append(names[module])
            divisor = math.lcm(divisor, _channel_divisor(module))
        found.append(
            RawGroup(
                root=names[root_module],
                width=len(group[0].idxs),
                producers=tuple(dict.fromkeys(producers)),
                consumers=tuple(dict.fromkeys(consumers)),
                divisor=divisor,
            )
        )
    return found


@dataclass(frozen=True)
class LayerSlice:
    """The channels of one named layer that a group's removal touches."""

    layer: str
    side: str  # "out": the layer's output channels; "in": its input channels
    idxs: tuple[int, ...]


def layer_slices(
    model: nn.Module, graph: tp.DependencyGraph, removals: Mapping[str, Sequence[int]]
) -> dict[str, list[LayerSlice]]:
    """For each root in ``removals``, every named layer's channels that removal would touch.

    Indices are mapped through concatenations and splits, so they are the layer's own.
    ``graph`` is ``model``'s dependency graph (:func:`build_graph`).
    """
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    result: dict[str, list[LayerSlice]] = {}
    for root, idxs in removals.items():
        module = modules[root]
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, sorted(int(i) for i in idxs))
        result[root] = [
            LayerSlice(
                layer=names[item.dep.target.module],
                side="out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in",
                idxs=tuple(sorted(int(i) for i in item.idxs)),
            )
            for item in group
            if item.dep.target.module in names
        ]
    return result


def remove_channels(model: nn.Module, example_input: torch.Tensor, removals: Mapping[str, Sequence[int]]) -> None:
    """Physically remove channels in place: ``removals`` maps root layer name -> indices to drop.

    Torch-Pruning edits the modules its graph was traced from, so this traces ``model`` itself:
    always a copy being pruned, never the dense model that was analysed.
    """
    if not removals:
        return
    graph = build_graph(model, example_input)
    modules = dict(model.named_modules())
    for root, idxs in removals.items():
        if not idxs:
            continue
        module = modules[root]
        pruner = graph.get_pruner_of_module(module)
        graph.get_pruning_group(module, pruner.prune_out_channels, sorted(int(i) for i in idxs)).prune()


def magnitude_importance(model: nn.Module, graph: tp.DependencyGraph, roots: Sequence[str]) -> dict[str, torch.Tensor]:
    """Torch-Pruning's group L2 magnitude importance (mean-normalised) of every channel of each root's group."""
    modules = dict(model.named_modules())
    importance = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")
    scores = {}
    for root in roots:
        module = modules[root]
        pruner = graph.get_pruner_of_module(module)
        width = pruner.get_out_channels(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        scores[root] = importance(group).detach()
    return scores
