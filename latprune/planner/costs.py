"""Build planning problems from a network: which groups set each layer's widths, and what a layer costs.

Cost models: predicted latency (the performance model's own cost terms: a constant plus
one cost per layer) or MACs (the FLOPs baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from latprune.branches import Branch
from latprune.groups import ChannelGroup
from latprune.perfmodel import CostTerms
from latprune.planner.next_context import NextLayerContext
from latprune.planner.problem import LayerTerm, PlanningProblem
from latprune.network import DTYPE, LayerInfo, LayerSignature


def layer_terms(layers: Mapping[str, LayerInfo], groups: Sequence[ChannelGroup],
                branches: Sequence[Branch] = ()) -> list[LayerTerm]:
    """How each traced layer's input and output widths depend on the groups, then the bias layer of each
    removable branch (present only while its first inner group is at width 0, as wide as its hub group)."""
    terms = []
    for name, info in layers.items():
        ins = tuple(i for i, g in enumerate(groups) if name in g.consumers)
        outs = [i for i, g in enumerate(groups) if name in g.producers]
        if info.depthwise and (ins or outs):
            g = (outs or list(ins))[0]
            terms.append(LayerTerm(name, (g,), 0, g, 0, depthwise=True))
            continue
        out = outs[0] if outs else None
        in_fixed = info.cin - sum(groups[i].width for i in ins)
        out_fixed = info.cout - (groups[out].width if out is not None else 0)
        terms.append(LayerTerm(name, ins, in_fixed, out, out_fixed))
    index = {g.id: i for i, g in enumerate(groups)}
    for branch in branches:
        gate = index[branch.groups[0]]
        if branch.hub in index:
            terms.append(LayerTerm(branch.id, (index[branch.hub],), 0, index[branch.hub], 0, depthwise=True, gate=gate))
        else:
            terms.append(LayerTerm(branch.id, (), branch.width, None, branch.width, gate=gate))
    return terms


def usable_branches(branches: Sequence[Branch], groups: Sequence[ChannelGroup]) -> list[Branch]:
    """The branches all of whose inner groups are among ``groups``."""
    ids = {g.id for g in groups}
    return [b for b in branches if set(b.groups) <= ids]


def signature_problem(layers: Mapping[str, LayerInfo], batch: int, groups: Sequence[ChannelGroup],
                      candidates: list[np.ndarray], values: list[np.ndarray], backend: str,
                      cost_of: Callable[[list[LayerSignature]], np.ndarray], constant: float = 0.0,
                      unit: str = "ms", branches: Sequence[Branch] = (),
                      branch_layers: Mapping[str, LayerInfo] | None = None) -> PlanningProblem:
    """A problem whose layer cost is ``cost_of`` the layers' signatures at the given widths; ``branches`` (with
    their bias layers' ``branch_layers``) may be removed where a group's candidates include 0."""
    branches = usable_branches(branches, groups)
    infos = list(layers.values()) + [branch_layers[b.id] for b in branches]
    terms = layer_terms(layers, groups, branches)
    context = NextLayerContext(terms, infos, len(layers))

    def cost(rows):
        return cost_of([infos[i].signature(cin, cout, batch, DTYPE, backend, next_align=context.align(i, cin, cout))
                        for i, cin, cout in rows])

    index = {g.id: i for i, g in enumerate(groups)}
    together = [tuple(index[gid] for gid in b.groups) for b in branches if len(b.groups) > 1]
    return PlanningProblem([g.id for g in groups], candidates, values, terms, cost,
                           constant=constant, unit=unit, together=together)


def latency_problem(layers: Mapping[str, LayerInfo], batch: int, groups: Sequence[ChannelGroup],
                    candidates: list[np.ndarray], values: list[np.ndarray], terms: CostTerms,
                    backend: str, branches: Sequence[Branch] = (),
                    branch_layers: Mapping[str, LayerInfo] | None = None) -> PlanningProblem:
    """Cost = the performance model's whole-network latency prediction (ms), from its own cost terms."""
    return signature_problem(layers, batch, groups, candidates, values, backend, terms.layer_ms,
                             constant=terms.constant_ms, branches=branches, branch_layers=branch_layers)


def macs_problem(layers: Mapping[str, LayerInfo], batch: int, groups: Sequence[ChannelGroup],
                 candidates: list[np.ndarray], values: list[np.ndarray], branches: Sequence[Branch] = (),
                 branch_layers: Mapping[str, LayerInfo] | None = None) -> PlanningProblem:
    """Cost = multiply-accumulates (millions) of the conv/linear layers."""
    return signature_problem(layers, batch, groups, candidates, values, "macs",
                             lambda signatures: np.array([s.macs * 1e-6 for s in signatures]), unit="M MACs",
                             branches=branches, branch_layers=branch_layers)
