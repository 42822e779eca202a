"""Channel importance criteria, registered by name.

Each criterion scores every root-relative channel of every group, aggregated over all
layers the group touches. Magnitude-style scores are divided by their group's mean so
groups of different layers are comparable (a typical channel scores 1 everywhere);
``sensitivity`` scores are output distortions, already in common units. Keeping width w
of a group is worth the sum of its w best channel scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from latprune.channels import Layout, masked_channels, weight_rows
from latprune.errors import LatpruneError
from latprune.groups import ChannelGroup


@dataclass(frozen=True)
class Criterion:
    compute: Callable[..., dict[str, np.ndarray]]
    needs_data: bool
    comparable: bool  # scores share units across groups without normalisation
    description: str


CRITERIA: dict[str, Criterion] = {}


def criterion(name: str, needs_data: bool, description: str, comparable: bool = False):
    def register(func):
        CRITERIA[name] = Criterion(func, needs_data, comparable, description)
        return func

    return register


def channel_importance(name: str, model: nn.Module, groups: Sequence[ChannelGroup], layout: Layout,
                       calib: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Normalised importance of every channel of every group under criterion ``name``."""
    if name not in CRITERIA:
        raise LatpruneError(f"unknown importance {name!r}; choose one of {', '.join(CRITERIA)}")
    chosen = CRITERIA[name]
    if chosen.needs_data and calib is None:
        raise LatpruneError(f"importance {name!r} needs calibration images: pass --calib DIR")
    model.eval()
    scores = chosen.compute(model, groups, layout, calib)
    if chosen.comparable:
        return scores
    return {gid: s / max(float(s.mean()), 1e-12) for gid, s in scores.items()}


def _magnitude(model: nn.Module, groups, layout: Layout, p: int) -> dict[str, np.ndarray]:
    modules = dict(model.named_modules())
    scores = {}
    for group in groups:
        total = np.zeros(group.width)
        for s in layout[group.id]:
            module = modules[s.layer]
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue  # BN scales say nothing about the filter's magnitude
            rows = weight_rows(module, s)
            if rows is not None:
                norms = rows.abs().sum(1) if p == 1 else rows.pow(2).sum(1).sqrt()
                total += (norms / norms.mean().clamp_min(1e-12)).numpy()  # each layer weighs the same
        scores[group.id] = total
    return scores


@criterion("l1", needs_data=False, description="L1 norm of every weight slice of the channel, over the group")
def _l1(model, groups, layout, calib):
    return _magnitude(model, groups, layout, p=1)


@criterion("l2", needs_data=False, description="L2 norm of every weight slice of the channel, over the group")
def _l2(model, groups, layout, calib):
    return _magnitude(model, groups, layout, p=2)


@criterion("bn", needs_data=False, description="|gamma| of the BatchNorm layers of the group (L2 where none)")
def _bn(model, groups, layout, calib):
    modules = dict(model.named_modules())
    fallback = _magnitude(model, groups, layout, p=2)
    scores = {}
    for group in groups:
        gammas = [modules[s.layer].weight.detach().abs()[list(s.idxs)].numpy() for s in layout[group.id]
                  if isinstance(modules[s.layer], nn.modules.batchnorm._BatchNorm) and s.side == "out"
                  and modules[s.layer].weight is not None]
        scores[group.id] = np.sum(gammas, axis=0) if gammas else fallback[group.id]
    return scores


@criterion("taylor", needs_data=True,
           description="first-order Taylor: (activation x gradient)^2 of a loss against the dense model's own "
                       "predictions (no labels)")
def _taylor(model, groups, layout, calib):
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    watched = {}
    for group in groups:
        slices = [s for s in layout[group.id] if s.side == "out"]
        norms = [s for s in slices if isinstance(modules[s.layer], nn.modules.batchnorm._BatchNorm)]
        watched[group.id] = norms or [s for s in slices if isinstance(modules[s.layer], (nn.Conv2d, nn.Linear))]
    names = {s.layer for slices in watched.values() for s in slices}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[name] = output
        return hook

    hooks = [modules[n].register_forward_hook(keep(n)) for n in names]
    totals = {g.id: np.zeros(g.width) for g in groups}
    try:
        for batch in tqdm(calib.split(32), desc="importance taylor", leave=False):
            model.zero_grad(set_to_none=True)
            logits = model(batch)
            F.cross_entropy(logits, logits.detach().argmax(1)).backward()
            for group in groups:
                per_sample = 0
                for s in watched[group.id]:
                    out = outputs[s.layer]
                    contrib = (out * out.grad)
                    contrib = contrib.sum(dim=tuple(range(2, contrib.dim()))) if contrib.dim() > 2 else contrib
                    per_sample = per_sample + contrib[:, list(s.idxs)]
                totals[group.id] += (per_sample.detach() ** 2).sum(0).numpy()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    return totals


SENSITIVITY_POINTS = 6
SENSITIVITY_IMAGES = 32


@criterion("sensitivity", needs_data=True, comparable=True,
           description="measured output distortion when the group alone keeps its best-L2 channels at a few widths")
def _sensitivity(model, groups, layout, calib):
    """Channel k (in L2 order) scores the distortion it saves: D(k - 1) - D(k), D interpolated.

    D(w) = mean squared logit error vs the dense model / mean squared dense logit, with only
    this group pruned to its w best channels; the sum of the top-w scores is then D(0) - D(w).
    """
    order = {gid: np.argsort(-s, kind="stable") for gid, s in _magnitude(model, groups, layout, p=2).items()}
    batch = calib[:SENSITIVITY_IMAGES]
    with torch.no_grad():
        reference = model(batch)
    scale = float(reference.pow(2).mean())
    scores = {}
    for group in tqdm(groups, desc="importance sensitivity", leave=False):
        widths = sorted({max(1, round(group.width * f)) for f in np.linspace(0, 1, SENSITIVITY_POINTS + 1)[1:]})
        distortion = {group.width: 0.0}
        for w in widths[:-1]:
            with masked_channels(model, layout, {group.id: order[group.id][w:]}), torch.no_grad():
                distortion[w] = float((model(batch) - reference).pow(2).mean()) / scale
        points = sorted(distortion)
        curve = np.interp(np.arange(group.width + 1), [0, *points], [max(distortion.values()) * 1.5 + 1e-6,
                                                                     *(distortion[p] for p in points)])
        curve = np.minimum.accumulate(curve)  # distortion never grows with more channels
        marginal = np.maximum(curve[:-1] - curve[1:], 0.0)
        channel = np.empty(group.width)
        channel[order[group.id]] = marginal
        scores[group.id] = channel
    return scores
