"""``ModelAnalysis``: everything latprune learns about a dense model, built once and handed on.

One dependency graph of the dense model gives its verified channel groups and where each
group's channels live in every layer; one traced forward pass gives the layers' static
facts. Profiling, planning, pruning and recovery all read this one object instead of
re-analysing the model. (Physical pruning still traces the *copy* it prunes: Torch-Pruning
edits the modules its graph was traced from.)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch_pruning as tp

from latprune.branch_removal import remove_branches
from latprune.branches import Branch, find_branches
from latprune.channel_ops import ChannelOp, wrap_channel_ops
from latprune.channels import Layout, group_layout
from latprune.graph import build_graph, magnitude_importance
from latprune.groups import ChannelGroup, ExcludedGroup, find_channel_groups
from latprune.models import LoadedModel
from latprune.network import LayerInfo, model_key, run_model, trace_layers

if TYPE_CHECKING:
    from latprune.pruned_file import PrunedModel


@dataclass
class ModelAnalysis:
    """A loaded dense model with its channel groups, channel layout, traced layers and model key."""

    loaded: LoadedModel
    groups: tuple[ChannelGroup, ...]
    excluded: tuple[ExcludedGroup, ...]
    total_macs: int
    layout: Layout  # group id -> every named layer's channel indices, root-relative order
    layers: dict[str, LayerInfo]  # conv/linear layers in execution order
    key: str  # model key: spec @ input shape
    graph: tp.DependencyGraph = field(repr=False)
    channel_ops: tuple[ChannelOp, ...] = ()  # parameter-free channel ops wrapped as index maps
    branches: tuple[Branch, ...] = ()  # residual branches that can be removed whole
    depth_notes: dict[str, str] = field(default_factory=dict)  # group id -> why it cannot go to width 0
    branch_layers: dict[str, LayerInfo] = field(default_factory=dict)  # branch id -> the bias layer replacing it

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def spec(self) -> str:
        return self.loaded.spec

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.loaded.input_shape

    def example_input(self) -> torch.Tensor:
        return self.loaded.example_input()

    def by_id(self) -> dict[str, ChannelGroup]:
        return {g.id: g for g in self.groups}

    def groups_named(self, ids: Sequence[str]) -> list[ChannelGroup]:
        """The groups whose ids are in ``ids``, in analysis order."""
        wanted = set(ids)
        return [g for g in self.groups if g.id in wanted]

    def magnitude_scores(self) -> dict[str, torch.Tensor]:
        """Torch-Pruning's group-L2 magnitude of every channel of every group (the TP baseline's criterion)."""
        return magnitude_importance(self.model, self.graph, [g.id for g in self.groups])

    def layers_of(self, model: torch.nn.Module) -> dict[str, LayerInfo]:
        """The conv/linear layers of a pruned copy in execution order: the dense model's, or, when branches were
        removed, those that remain with the bias layers in their place (traced from ``model``)."""
        names = {n for n, _ in model.named_modules()}
        if not any(b.id in names for b in self.branches):
            return self.layers
        return trace_layers(model, self.example_input())

    def to_json(self) -> dict:
        return {"total_macs": self.total_macs, "groups": [g.to_json() for g in self.groups],
                "excluded": [e.to_json() for e in self.excluded],
                "channel_ops": [op.to_json() for op in self.channel_ops],
                "branches": [b.to_json() for b in self.branches],
                "depth_notes": {gid: note for gid, note in self.depth_notes.items() if note}}


def analyse(loaded: LoadedModel | PrunedModel) -> ModelAnalysis:
    """Trace ``loaded`` once: dependency graph, verified groups, channel layout, layer facts (a pruned model is
    analysed as the smaller network it is).

    Parameter-free channel ops (channel pads, slices...) are wrapped in ``loaded.model`` itself as
    index maps (:mod:`latprune.channel_ops`), so groups reach through them; the wrapped model
    computes exactly what it did and keeps its state dict.
    """
    if not isinstance(loaded, LoadedModel):
        loaded = LoadedModel(loaded.model, loaded.spec, loaded.family, loaded.input_shape,
                             preprocessing=loaded.preprocessing)
    x = loaded.example_input()
    run_model(loaded.model, x)  # a model that cannot run this input says so before any tracing
    channel_ops = wrap_channel_ops(loaded.model, x)
    graph = build_graph(loaded.model, x)
    found = find_channel_groups(loaded.model, x, graph)
    layout = group_layout(loaded.model, graph, found.groups) if found.groups else {}
    branches, notes = find_branches(loaded.model, x, found.groups, layout) if found.groups else ((), {})
    branch_of = {gid: b.id for b in branches for gid in b.groups}
    groups = tuple(dataclasses.replace(g, branch=branch_of.get(g.id, "")) for g in found.groups)
    branch_layers = {}
    if branches:
        removed = remove_branches(copy.deepcopy(loaded.model), x, branches)
        traced = trace_layers(removed, x)
        branch_layers = {b.id: traced[b.id] for b in branches}
    return ModelAnalysis(loaded=loaded, groups=groups, excluded=found.excluded, total_macs=found.total_macs,
                         layout=layout, layers=trace_layers(loaded.model, x), key=model_key(loaded), graph=graph,
                         channel_ops=channel_ops, branches=branches, depth_notes=notes, branch_layers=branch_layers)


def as_analysis(model: LoadedModel | ModelAnalysis) -> ModelAnalysis:
    """Accept either a loaded model (analysed here) or an analysis already made."""
    return model if isinstance(model, ModelAnalysis) else analyse(model)

