"""Build planning problems from a network: which groups set each layer's widths, and what a layer costs.

Cost models: predicted latency (the performance model's own cost terms: a constant plus
one cost per layer) or MACs (the FLOPs baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from latprune.groups import ChannelGroup
from latprune.perfmodel import CostTerms
from latprune.planner.problem import LayerTerm, PlanningProblem
from latprune.network import DTYPE, LayerInfo, LayerSignature


def layer_terms(layers: Mapping[str, LayerInfo], groups: Sequence[ChannelGroup]) -> list[LayerTerm]:
    """How each traced layer's input and output widths depend on the groups."""
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
    return terms


def signature_problem(layers: Mapping[str, LayerInfo], batch: int, groups: Sequence[ChannelGroup],
                      candidates: list[np.ndarray], values: list[np.ndarray], backend: str,
                      cost_of: Callable[[list[LayerSignature]], np.ndarray], constant: float = 0.0,
                      unit: str = "ms") -> PlanningProblem:
    """A problem whose layer cost is ``cost_of`` the layers' signatures at the given widths."""
    infos = list(layers.values())

    def cost(rows):
        return cost_of([infos[i].signature(cin, cout, batch, DTYPE, backend) for i, cin, cout in rows])

    return PlanningProblem([g.id for g in groups], candidates, values, layer_terms(layers, groups), cost,
                           constant=constant, unit=unit)


def latency_problem(layers: Mapping[str, LayerInfo], batch: int, groups: Sequence[ChannelGroup],
                    candidates: list[np.ndarray], values: list[np.ndarray], terms: CostTerms,
                    backend: str) -> PlanningProblem:
    """Cost = the performance model's whole-network latency prediction (ms), from its own cost terms."""
    return signature_problem(layers, batch, groups, candidates, values, backend, terms.layer_ms,
                             constant=terms.constant_ms)


def macs_problem(layers: Mapping[str, LayerInfo], batch: int, groups: Sequence[ChannelGroup],
                 candidates: list[np.ndarray], values: list[np.ndarray]) -> PlanningProblem:
    """Cost = multiply-accumulates (millions) of the conv/linear layers."""
    return signature_problem(layers, batch, groups, candidates, values, "macs",
                             lambda signatures: np.array([s.macs * 1e-6 for s in signatures]), unit="M MACs")
