"""Recovery recipes: parse ``two-stage+asr``-style names and run the steps in order.

A recipe is at most one reconstruction (first), any corrections, and at most one
fine-tuning (last): e.g. ``two-stage+overparam``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from latprune.analysis import ModelAnalysis, as_analysis
from latprune.channels import Layout
from latprune.errors import LatpruneError
from latprune.graph import LayerSlice
from latprune.groups import ChannelGroup
from latprune.models import LoadedModel
from latprune.pruned_file import PrunedModel, prune_loaded
from latprune.recovery.batchnorm import recalibrate_batchnorm, restate_batchnorm
from latprune.recovery.correction import correct_outputs
from latprune.recovery.finetune import FinetuneSettings, finetune, stage_outputs
from latprune.recovery.output_layer import refit_output_layer
from latprune.recovery.overparam import expand_network, merge_network
from latprune.recovery.reconstruction import (
    ReconstructionSettings,
    phase_one,
    phase_two,
    tap_errors,
)
from latprune.recovery.ridge import ridge_reconstruct
from latprune.recovery.taps import Tap, find_taps, kept_output_channels

RECONSTRUCTIONS = ("two-stage", "ridge", "ridge-tuned")
CORRECTIONS = ("bn", "layerwise", "asr")
FINETUNES = ("finetune", "overparam")
METHODS = ("none",) + RECONSTRUCTIONS + CORRECTIONS + FINETUNES


ERROR_IMAGES = 256  # calibration images the tap error before and after is reported on


@dataclass
class RecoveryReport:
    """What a recovery did: each step's wall time and numbers, and the tap error before and after (on the first
    ``error_images`` calibration images: a report, not worth a pass of every image through both networks)."""

    recipe: str
    calibration_images: int
    steps: list[dict] = field(default_factory=list)
    error_before: float | None = None
    error_after: float | None = None
    seconds: float = 0.0
    error_images: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def parse_recipe(recipe: str) -> list[str]:
    """Split ``a+b`` into steps, checking names and order (a reconstruction comes first, once)."""
    steps = [s.strip() for s in recipe.split("+") if s.strip()]
    if not steps:
        raise LatpruneError("empty recovery recipe; choose from " + ", ".join(METHODS))
    for step in steps:
        if step not in METHODS:
            raise LatpruneError(f"unknown recovery method {step!r}; choose from {', '.join(METHODS)} (join with +)")
    if "none" in steps and len(steps) > 1:
        raise LatpruneError("'none' cannot be combined with other recovery methods")
    rebuilt = [s for s in steps if s in RECONSTRUCTIONS]
    if len(rebuilt) > 1 or (rebuilt and steps[0] != rebuilt[0]):
        raise LatpruneError(f"use at most one of {', '.join(RECONSTRUCTIONS)}, as the first step of the recipe")
    tuned = [s for s in steps if s in FINETUNES]
    if len(tuned) > 1 or (tuned and steps[-1] != tuned[0]):
        raise LatpruneError(f"use at most one of {', '.join(FINETUNES)}, as the last step of the recipe")
    return [s for s in steps if s != "none"]


@dataclass
class _Context:
    analysis: ModelAnalysis  # of the dense model
    taps: list[Tap]
    pruned_groups: list[ChannelGroup]
    layout: Layout  # where the pruned groups' channels live in each dense layer
    kept: dict[str, torch.Tensor]
    calib: torch.Tensor
    labels: torch.Tensor | None
    settings: ReconstructionSettings
    tuning: FinetuneSettings
    progress: bool
    scoring: bool = False  # only the result's outputs are used (see :func:`recover`)
    last_step: bool = False  # the step running is the recipe's last


def recover(
    dense: LoadedModel | ModelAnalysis,
    pruned: PrunedModel,
    recipe: str,
    calib: torch.Tensor,
    settings: ReconstructionSettings | None = None,
    progress: bool = False,
    labels: torch.Tensor | None = None,
    tuning: FinetuneSettings | None = None,
    scoring: bool = False,
) -> tuple[PrunedModel, RecoveryReport]:
    """Repair ``pruned`` toward ``dense`` with the recipe's steps on ``calib`` images.

    Returns a new pruned model (``pruned`` is left untouched) whose metadata records the
    report. Reconstruction steps restart from the dense weights and the kept channels.
    Only the fine-tuning steps read ``labels`` (one class index per image); without them
    they distil the dense network's outputs. ``scoring``: the caller only scores the result's
    outputs (the planner's search), so what leaves them as they are is not done: the tap errors
    of the report (each a pass of both networks over up to ``ERROR_IMAGES`` images) and the
    BatchNorm restatement that ends the recipe (a pass over ``calib``).
    """
    steps = parse_recipe(recipe)
    analysis = as_analysis(dense)
    _check_inputs(analysis.loaded, pruned, calib, labels, steps)
    settings = settings or ReconstructionSettings()
    dense_model = analysis.model.eval()
    pruned_groups = analysis.groups_named(list(pruned.kept))
    layout = {g.id: analysis.layout[g.id] for g in pruned_groups}
    remaining = {name for name, _ in pruned.model.named_modules()}
    taps = [t for t in find_taps(dense_model, analysis.example_input()) if t.layer in remaining]  # removed branches
    ctx = _Context(analysis, taps, pruned_groups, layout,
                   kept_output_channels(layout, pruned_groups, pruned.kept), calib, labels, settings,
                   tuning or FinetuneSettings(), progress, scoring)
    report = RecoveryReport(recipe="+".join(steps) or "none", calibration_images=len(calib),
                            error_images=0 if scoring else min(len(calib), ERROR_IMAGES))
    started = time.perf_counter()
    result = PrunedModel(copy.deepcopy(pruned.model), pruned.spec, pruned.input_shape, dict(pruned.kept),
                         pruned.family, copy.deepcopy(pruned.metadata), pruned.preprocessing)
    if not scoring:
        report.error_before = tap_errors(result.model, dense_model, ctx.taps, ctx.kept, calib[:ERROR_IMAGES])
    for index, step in enumerate(steps):
        began, ctx.last_step = time.perf_counter(), index == len(steps) - 1
        details = STEPS[step](ctx, result)
        report.steps.append({"step": step, "seconds": round(time.perf_counter() - began, 3), **details})
    result.model.eval()
    if not scoring:
        report.error_after = tap_errors(result.model, dense_model, ctx.taps, ctx.kept, calib[:ERROR_IMAGES])
    report.seconds = round(time.perf_counter() - started, 3)
    result.metadata["recovery"] = report.to_dict()
    return result, report


def _check_inputs(
    dense: LoadedModel, pruned: PrunedModel, calib: torch.Tensor, labels: torch.Tensor | None, steps: list[str]
) -> None:
    pruned.check_made_from(dense.spec)
    if tuple(calib.shape[1:]) != tuple(dense.input_shape[1:]):
        raise LatpruneError(f"calibration images have shape {tuple(calib.shape[1:])}, the model expects "
                            f"{tuple(dense.input_shape[1:])}")
    if steps and len(calib) < 2:
        raise LatpruneError(f"recovery needs at least 2 calibration images, got {len(calib)}")
    if any(s in RECONSTRUCTIONS for s in steps) and pruned.metadata.get("sparsity"):
        raise LatpruneError("two-stage and ridge rebuild channels of a structured plan; an unstructured sparse model "
                            "takes bn, layerwise or asr")
    if any(s in FINETUNES for s in steps) and pruned.metadata.get("sparsity"):
        raise LatpruneError("fine-tuning would refill the zeroed weights of an unstructured sparse model; "
                            "it takes bn, layerwise or asr")
    if labels is not None and labels.shape != (len(calib),):
        raise LatpruneError(f"expected one label per image ({len(calib)}), got labels of shape {tuple(labels.shape)}")


def _bn(ctx: _Context, result: PrunedModel) -> dict:
    return {"batchnorms": recalibrate_batchnorm(result.model, ctx.calib, progress=ctx.progress)}


def _correction(rule: str) -> Callable[[_Context, PrunedModel], dict]:
    def step(ctx: _Context, result: PrunedModel) -> dict:
        recalibrate_batchnorm(result.model, ctx.calib, progress=ctx.progress)
        summary = correct_outputs(result.model, ctx.analysis.model, ctx.taps, ctx.kept, ctx.calib, rule,
                                  progress=ctx.progress)
        recalibrate_batchnorm(result.model, ctx.calib, progress=ctx.progress)
        return summary

    return step


def _phase_two_in_box(ctx: _Context, result: PrunedModel, began: float) -> dict:
    """Two-stage's phase 2 on ``result`` in what is left of the reconstruction's box since ``began``, the output
    layer refitted (unless the settings say not to), then the BatchNorm statistics restated; their records."""
    box = ctx.settings.seconds
    left = None if box is None else max(box - (time.perf_counter() - began), 0.0)
    phase2 = phase_two(result.model, ctx.analysis.model, ctx.taps, ctx.kept, ctx.calib, ctx.settings, ctx.progress,
                       left)
    record = {"phase2": phase2.to_json()}
    if ctx.settings.refit_output:
        record["output_layer"] = refit_output_layer(result.model, ctx.analysis.model, ctx.calib,
                                                    ctx.settings.ridge).to_json()
    _restate_at_end(ctx, result)
    return record


def _restate_at_end(ctx: _Context, result: PrunedModel) -> None:
    """Restate the BatchNorm statistics that end a reconstruction step (so a following ``bn`` or ``asr`` builds on
    it), unless only the outputs are scored and no step follows: the restatement keeps the function."""
    if not (ctx.scoring and ctx.last_step):
        restate_batchnorm(result.model, ctx.calib)


def _two_stage(ctx: _Context, result: PrunedModel) -> dict:
    box, began = ctx.settings.seconds, time.perf_counter()
    full = copy.deepcopy(ctx.analysis.model)
    phase1 = phase_one(full, ctx.analysis.model, ctx.taps, ctx.kept, _removed_slices(ctx, result.kept),
                       ctx.calib, ctx.settings, ctx.progress, None if box is None else box / 2)
    result.model = prune_loaded(ctx.analysis, result.kept, weights_from=full).model
    return {"phase1": phase1.to_json(), **_phase_two_in_box(ctx, result, began), "time_box_s": box}


def _ridge_fit(ctx: _Context, result: PrunedModel) -> dict:
    result.model = prune_loaded(ctx.analysis, result.kept).model
    return ridge_reconstruct(result.model, ctx.analysis.model, ctx.taps, ctx.kept, ctx.calib, ctx.settings,
                             ctx.progress)


def _ridge(ctx: _Context, result: PrunedModel) -> dict:
    summary = _ridge_fit(ctx, result)
    _restate_at_end(ctx, result)
    return summary


def _ridge_tuned(ctx: _Context, result: PrunedModel) -> dict:
    """Ridge, then two-stage's phase 2 from the ridge solution (in the rest of the box). Measured on cifar resnet20
    plans with removed residual branches, it kept far more top-1 than two-stage (docs/recovery.md)."""
    began = time.perf_counter()
    summary = _ridge_fit(ctx, result)
    restate_batchnorm(result.model, ctx.calib)  # phase 2 tunes the restated scales and shifts
    return {"ridge": summary, **_phase_two_in_box(ctx, result, began), "time_box_s": ctx.settings.seconds}


def _finetune(ctx: _Context, result: PrunedModel) -> dict:
    steps = finetune(result.model, ctx.analysis.model, ctx.calib, ctx.labels, ctx.tuning, progress=ctx.progress)
    recalibrate_batchnorm(result.model, ctx.calib, progress=ctx.progress)
    return {**steps.to_json(), "labels": ctx.labels is not None, "time_box_s": ctx.tuning.seconds}


def _overparam(ctx: _Context, result: PrunedModel) -> dict:
    sp_layers = stage_outputs(ctx.analysis.model, ctx.analysis.example_input())
    expanded = expand_network(result.model, ctx.tuning.expansion, ctx.tuning.seed)
    steps = finetune(result.model, ctx.analysis.model, ctx.calib, ctx.labels, ctx.tuning, sp_layers, ctx.progress)
    merge_network(result.model)
    recalibrate_batchnorm(result.model, ctx.calib, progress=ctx.progress)
    return {**steps.to_json(), "labels": ctx.labels is not None, "time_box_s": ctx.tuning.seconds,
            "expanded_layers": len(expanded), "sp_layers": sp_layers}


def _removed_slices(ctx: _Context, kept: dict[str, list[int]]) -> list[LayerSlice]:
    slices = []
    for group in ctx.pruned_groups:
        removed = np.setdiff1d(np.arange(group.width), np.asarray(kept[group.id], dtype=np.int64))
        if len(removed):
            for s in ctx.layout[group.id]:
                slices.append(LayerSlice(s.layer, s.side, tuple(int(i) for i in np.asarray(s.idxs)[removed])))
    return slices


STEPS: dict[str, Callable[[_Context, PrunedModel], dict]] = {
    "bn": _bn,
    "layerwise": _correction("layerwise"),
    "asr": _correction("asr"),
    "two-stage": _two_stage,
    "ridge": _ridge,
    "ridge-tuned": _ridge_tuned,
    "finetune": _finetune,
    "overparam": _overparam,
}
