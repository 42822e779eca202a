"""Build planning problems from a network: which groups set each layer's widths, and what a layer costs.

Cost models: predicted latency (the fitted performance model, whole-network affine terms
included) or MACs (the FLOPs baseline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch.nn as nn

from latprune.groups import ChannelGroup
from latprune.perfmodel.estimator import NetworkLatencyModel
from latprune.planner.problem import LayerTerm, PlanningProblem
from latprune.profiler.structure import DTYPE, LayerInfo, trace_layers


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


def latency_problem(model: nn.Module, input_shape: tuple[int, ...], groups: Sequence[ChannelGroup],
                    candidates: list[np.ndarray], values: list[np.ndarray], perf: NetworkLatencyModel,
                    model_key: str, backend: str) -> PlanningProblem:
    """Cost = the performance model's whole-network latency prediction (ms)."""
    import torch

    layers = trace_layers(model, torch.zeros(input_shape))
    infos = list(layers.values())
    a, b = perf.affine(model_key)
    batch = input_shape[0]

    def cost(rows):
        signatures = [infos[i].signature(cin, cout, batch, DTYPE, backend) for i, cin, cout in rows]
        return b * perf.layers.predict(signatures)

    return PlanningProblem([g.id for g in groups], candidates, values, layer_terms(layers, groups), cost, constant=a)


def macs_problem(model: nn.Module, input_shape: tuple[int, ...], groups: Sequence[ChannelGroup],
                 candidates: list[np.ndarray], values: list[np.ndarray]) -> PlanningProblem:
    """Cost = multiply-accumulates (millions) of the conv/linear layers."""
    import torch

    layers = trace_layers(model, torch.zeros(input_shape))
    infos = list(layers.values())
    batch = input_shape[0]

    def cost(rows):
        return np.array([infos[i].signature(cin, cout, batch, DTYPE, "macs").macs * 1e-6 for i, cin, cout in rows])

    return PlanningProblem([g.id for g in groups], candidates, values, layer_terms(layers, groups), cost)
