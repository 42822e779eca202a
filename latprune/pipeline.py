"""The pipeline's stages, called by ``latprune run`` and by every single-step command alike.

model -> analysis -> profile -> performance model -> plan -> pruned model -> recovered model
-> ONNX / measurement / accuracy -> report. Each stage takes plain objects and files and
returns what the next one reads; a request (:class:`~latprune.budget.BudgetRequest`,
:class:`RecoveryRequest`) is validated when it is made, before any slow stage runs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from latprune.analysis import ModelAnalysis
from latprune.analysis import analyse
from latprune.budget import Budget, BudgetRequest
from latprune.defaults import IMPORTANCE_CALIB_SIZE, OBJECTIVES, PLANNERS
from latprune.errors import LatpruneError
from latprune.models import LoadedModel, load_model, parse_input_shape
from latprune.network import Measurement, model_key, network_signatures
from latprune.perfmodel import NetworkLatencyModel
from latprune.perfmodel.api import FitSummary, current_perf_model, device_id_for, fit_perf_model, fleet
from latprune.perfmodel.validate import validate_model as validate
from latprune.plan_scoring import calibrated_search, scoring_images
from latprune.planner import api as planner
from latprune.planner.closed_loop import ROUND_COLUMNS, LoopSettings, closed_loop, round_cells
from latprune.planner.records import LoopRound, VerificationRecord
from latprune.planner.plan import Plan
from latprune.planner.search import CalibratedSearch, SearchSettings
from latprune.preprocessing import Preprocessing
from latprune.profiler.api import (PairedTiming, ProfileReport, ProfileSettings, ProfileStore, RoundsRule,
                                  VariantTimer, describe_device, fingerprint, measure_models, measure_paired,
                                  profile_model, profiled_quiet_ms)
from latprune.pruned_file import PrunedModel, dense_origin, load_dense_for, load_pruned, prune_loaded
from latprune.recovery import RecoveryReport, recover
from latprune.recovery.reconstruction import ReconstructionSettings
from latprune.run_summary import RunSummary
from latprune.settings import HOLD_CHANNEL_OPS, PlanSettings, RecoveryRequest, Verification, held_groups

__all__ = ["PLANNERS", "Budget", "BudgetRequest", "PlanSettings", "RecoveryRequest", "analyse", "calibration_images",
           "dense_origin", "evaluate", "export", "fit", "load", "load_dense_for", "load_pruned_or_dense", "measure",
           "measure_against_dense", "quiet_dense_ms", "RoundsRule",
           "plan", "plan_like_widths", "predict", "profile", "prune", "repair", "report", "sparsify",
           "this_device", "uniform", "LoopSettings", "ROUND_COLUMNS", "Verification", "round_cells",
           "OBJECTIVES", "SearchSettings", "calibrated_search", "validate", "HOLD_CHANNEL_OPS", "held_groups", "fleet"]


# ---------------------------------------------------------------- load and analyse


def load(spec: str, weights: str | None = None, input_shape: str | Sequence[int] | None = None,
         preprocessing: Mapping[str, Any] | None = None) -> LoadedModel:
    """The dense model named by ``spec`` (``input_shape`` as ``NxCxHxW`` text or a tuple; ``preprocessing``: the
    parts of its image preprocessing to replace, mean / std / resize)."""
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    return load_model(spec, weights=weights, input_shape=tuple(input_shape) if input_shape else None,
                      preprocessing=preprocessing)


def load_pruned_or_dense(spec: str | None, weights: str | None = None, input_shape: str | None = None,
                         pruned: str | None = None, preprocessing: Mapping[str, Any] | None = None
                         ) -> LoadedModel | PrunedModel:
    """A pruned file (checked against ``spec`` when both are named; its own spec is imported only when built in
    or named as ``spec``) or a dense model. A pruned file keeps the preprocessing it records: one given that
    differs is refused."""
    if pruned:
        if weights:
            raise LatpruneError("--weights and --pruned exclude each other (a pruned file holds its weights)")
        model = load_pruned(pruned, spec)
        if preprocessing and model.preprocessing.with_options(**preprocessing) != model.preprocessing:
            recorded = model.preprocessing.describe(model.input_shape)
            raise LatpruneError(f"{pruned} records its preprocessing ({recorded}); --mean/--std/--resize differ "
                                f"from it")
        return model
    if not spec:
        raise LatpruneError("name a model with --model SPEC (or a pruned model with --pruned FILE)")
    return load(spec, weights, input_shape, preprocessing)


# ---------------------------------------------------------------- profile, fit, predict


def profile(analysis: ModelAnalysis, backend: str, db: str | os.PathLike | None = None,
            settings: ProfileSettings = ProfileSettings(), threads: int | None = None,
            progress: bool = True) -> ProfileReport:
    """Time the model's layers in-network on ``backend`` into the profile database (resuming)."""
    return profile_model(analysis, backend, db=db, settings=settings, threads=threads, progress=progress)


def fit(db: str | os.PathLike | None, backend: str, threads: int | None = None, estimator: str | None = None,
        device: str | None = None) -> tuple[NetworkLatencyModel, FitSummary]:
    """The performance model of ``device`` (a stored fingerprint; default: this machine) and ``backend``:
    the stored fit if current, else refitted.

    ``estimator`` forces a fresh fit with that estimator (``auto`` picks by held-out error).
    """
    if estimator is None:
        return current_perf_model(db, backend, threads, device)
    with ProfileStore(db, readonly=True) as store:
        device_id, device = device_id_for(store, backend, threads, device)
        return fit_perf_model(store, device_id, backend, estimator=estimator, device=device)


def this_device(backend: str, threads: int | None = None) -> str:
    """This machine's fingerprint for ``backend`` (no backend is started)."""
    return fingerprint(describe_device(backend, threads))


def predict(perf: NetworkLatencyModel, fitted: FitSummary, model: LoadedModel | PrunedModel, backend: str) -> dict:
    """Predicted latency of a dense or pruned model (at an input shape the profile timed); for a pruned one also
    its dense original's and the speedup."""
    key = model_key(model)
    fitted.check_input_shape(model.input_shape, model.spec)
    result = {"predicted_ms": perf.predict(key, network_signatures(model.model, model.input_shape, backend)),
              "overhead_fitted": perf.knows(key)}
    if isinstance(model, PrunedModel):
        dense = load_model(model.spec, input_shape=model.input_shape)
        result["dense_predicted_ms"] = perf.predict(key, network_signatures(dense.model, dense.input_shape, backend))
        result["predicted_speedup"] = result["dense_predicted_ms"] / result["predicted_ms"]
    return result


# ---------------------------------------------------------------- plan


def plan(analysis: ModelAnalysis, request: BudgetRequest, perf: NetworkLatencyModel, fitted: FitSummary,
         backend: str, settings: PlanSettings = PlanSettings(), calib: torch.Tensor | None = None,
         verify: Verification = Verification(enabled=False), start: Plan | None = None) -> Plan:
    """Per-group widths within the budget; a speedup divides the predicted dense latency (``start``: the
    closed loop's first plan, one made elsewhere; see `latprune verify`). Of ``calib``, importance and the search
    score the first ``IMPORTANCE_CALIB_SIZE``, the search's finalists are repaired on up to 1,024, and with at
    least 256 images after the first ``settings.selection.fit_images`` (recovery's), the best finalist of each
    structure is recovered by ``settings.selection.recipe`` and scored on up to 1,024 of them.

    With ``verify`` enabled on the profiled device, the closed loop measures each plan on the
    device and re-plans until the *measured* latency lies in the band (see
    :mod:`latprune.planner.closed_loop`); otherwise the plan meets the budget as predicted.
    """
    fitted.check_input_shape(analysis.input_shape, analysis.spec)
    inputs = planner.prepare(analysis, importance=settings.importance, calib=scoring_images(calib),
                             policy=settings.policy(fitted.alignment_step, analysis.groups), perf=perf,
                             backend=backend, device=fitted.device)
    here = this_device(backend, verify.threads)
    verifying = verify.enabled and fitted.device == here
    # a budget in ms is judged against the dense model as measured: with the loop, only a measurement refuses it
    budget = inputs.resolve(request, refuse_met=not verifying or request.budget_ms is None)
    search = calibrated_search(inputs, settings, calib, verify.progress) if settings.objective == "calibrated" else None
    if not verifying:
        chosen = _solve(inputs, budget, settings, search)
        reason = ("verification off (--no-verify)" if not verify.enabled else
                  f"the performance model is device {fitted.device}'s, not this machine's ({here}): not verified on "
                  f"the device")
        return chosen.with_records(verification=VerificationRecord.unverified(reason))
    began = time.perf_counter()
    loop = verify.loop
    rule = RoundsRule(min_rounds=loop.timing_rounds, max_rounds=max(loop.timing_rounds, loop.timing_max_rounds),
                      max_seconds=loop.timing_max_seconds)
    reference = verify.reference  # (a dense network not the planned one: the first round corrects the aim)
    with VariantTimer(analysis, backend, db=verify.db, threads=verify.threads, rule=rule, settings=verify.timing,
                      reference=reference and reference.model) as timer:
        session, ms = _LoopSession(inputs, settings, timer, verify, search), request.budget_ms is not None
        correction = _dense_correction(inputs, budget, timer.dense_ms) if ms and not reference else 1.0
        chosen = closed_loop(session, timer, reference.request if reference else request, budget, verify.loop,
                             on_round=_announce_round if verify.progress else None, correction=correction,
                             start=start)
    # the loop's time with the timer's start and warm-up
    return chosen.with_records(verification=dataclasses.replace(chosen.verification,
                                                                seconds=time.perf_counter() - began))


def _dense_correction(inputs: planner.PlanningInputs, budget: Budget, dense_measured_ms: float) -> float:
    """Measured over predicted latency of the dense model: a budget in milliseconds is a fraction of the dense
    model as *measured*, so the first plan's aim is scaled by it. A budget the dense model meets as measured is
    refused (nothing to prune)."""
    predicted = inputs.dense_ms()
    if dense_measured_ms <= budget.ceiling_ms:
        raise LatpruneError(f"the dense model measures {dense_measured_ms:.4g} ms here (predicted {predicted:.4g} ms), "
                            f"already within a budget of {budget.ceiling_ms:.4g} ms: nothing to prune")
    return dense_measured_ms / predicted


def _solve(inputs: planner.PlanningInputs, budget: Budget, settings: PlanSettings,
           search: CalibratedSearch | None = None) -> Plan:
    if search is not None:
        return search.plan(inputs, budget, bins=settings.bins, max_macs=settings.max_macs)
    if settings.method == "latency":
        return planner.latency_plan(inputs, budget, bins=settings.bins, max_macs=settings.max_macs)
    if settings.method == "flops":
        return planner.flops_plan(inputs, budget, bins=settings.bins)
    if settings.method == "uniform":
        return planner.uniform_plan_for_budget(inputs, budget)
    return planner.tp_global_plan(inputs, budget)


def _announce_round(record: LoopRound) -> None:
    import sys

    low, high = record.band_ms
    rejected = record.rejected_rounds
    contended = f"; {rejected} timing rounds left out (host contended or in its slow state)" if rejected else ""
    print(f"latprune: verify round {record.round}: predicted {record.predicted_ms:.4g} ms, measured "
          f"{record.measured_ms:.4g} ms (band {low:.4g}-{high:.4g} ms): {record.verdict()}{contended}",
          file=sys.stderr, flush=True)


class _LoopSession:
    """The closed loop's view of the planner and the performance model (:class:`closed_loop.LoopModel`)."""

    def __init__(self, inputs: planner.PlanningInputs, settings: PlanSettings, timer: VariantTimer,
                 verify: Verification, search: CalibratedSearch | None = None):
        self.inputs, self.settings, self.timer, self.verify = inputs, settings, timer, verify
        self.search = search

    def solve(self, budget: Budget) -> Plan:
        return _solve(self.inputs, budget, self.settings, self.search)

    def predict(self, chosen: Plan) -> float:
        widths = chosen.widths()
        return self.inputs.latency_problem().cost_of_widths([widths[g.id] for g in self.inputs.groups])

    def fastest_ms(self) -> float:
        problem = self.inputs.latency_problem()
        return problem.total_cost(problem.fastest())

    def learn(self) -> None:
        perf, _ = fit(self.timer.db, self.inputs.backend, self.verify.threads, estimator="auto")
        self.inputs = planner.with_perf(self.inputs, perf)


PLAN_LIKE_FRACTIONS = (0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def plan_like_widths(analysis: ModelAnalysis, perf: NetworkLatencyModel, fitted: FitSummary, backend: str,
                     fractions: Sequence[float] = PLAN_LIKE_FRACTIONS) -> list[tuple[float, dict[str, int]]]:
    """The widths the latency planner chooses (open loop, l2) at these fractions of the predicted dense
    latency: the networks a performance model must get right. Unreachable fractions are left out."""
    inputs = planner.prepare(analysis, policy=PlanSettings().policy(fitted.alignment_step), perf=perf,
                             backend=backend, device=fitted.device)
    dense = inputs.dense_ms()
    chosen = []
    for fraction in fractions:
        try:
            chosen.append((fraction, planner.latency_plan(inputs, Budget(fraction * dense, "given")).widths()))
        except LatpruneError:
            continue
    return chosen


def uniform(analysis: ModelAnalysis, ratio: float, settings: PlanSettings = PlanSettings(),
            calib: torch.Tensor | None = None) -> Plan:
    """Keep the fraction ``ratio`` of every group (no performance model needed)."""
    inputs = planner.prepare(analysis, importance=settings.importance, calib=scoring_images(calib),
                             policy=settings.policy(None, analysis.groups))
    return planner.uniform_plan(inputs, ratio)


# ---------------------------------------------------------------- prune and recover


def prune(analysis: ModelAnalysis, chosen: Plan) -> PrunedModel:
    """The real, smaller network of a plan (checked to be for this model, its input shape and its groups)."""
    if chosen.model != analysis.spec or tuple(chosen.input_shape) != tuple(analysis.input_shape):
        raise LatpruneError(f"the plan is for {chosen.model} at {chosen.input_shape}, not {analysis.spec} at "
                            f"{list(analysis.input_shape)}")
    chosen.check_groups(analysis.groups)
    images = analysis.loaded.preprocessing
    planned = chosen.preprocessing or images
    if planned != images:
        shape = analysis.input_shape
        raise LatpruneError(f"the plan was made with another image preprocessing ({planned.describe(shape)}) than "
                            f"the model has now ({images.describe(shape)}): give the same --mean/--std/--resize")
    return prune_loaded(analysis, chosen.kept(),
                        metadata={"plan": chosen.header(), "dense": dense_origin(analysis.loaded)})


def sparsify(loaded: LoadedModel, sparsity: float) -> PrunedModel:
    """Unstructured global magnitude sparsity (shapes unchanged), saved like a pruned model."""
    from latprune.sparsity import global_magnitude_sparsify

    origin = dense_origin(loaded)  # before sparsifying: a factory's weights are recorded by their hash
    global_magnitude_sparsify(loaded.model, sparsity)
    return PrunedModel(loaded.model, loaded.spec, loaded.input_shape, {}, loaded.family,
                       {"sparsity": sparsity, "method": "global-magnitude", "dense": origin},
                       preprocessing=loaded.preprocessing)


def calibration_images(folder: str, loaded: LoadedModel, size: int | None = IMPORTANCE_CALIB_SIZE) -> torch.Tensor:
    """Unlabeled images from any folder layout, preprocessed for ``loaded`` (labels are never read)."""
    from latprune.data import calibration_tensor

    return calibration_tensor(folder, loaded.preprocessing, loaded.input_shape, size=size)


def repair(analysis: ModelAnalysis, pruned: PrunedModel, request: RecoveryRequest,
           images: tuple[torch.Tensor, torch.Tensor | None] | None = None,
           progress: bool = True) -> tuple[PrunedModel, RecoveryReport | None]:
    """Apply the request's recipe toward the dense model; (``pruned``, None) when the recipe is none.

    ``images``: the (images, labels) already read for this request, if any; else read here.
    """
    if not request.steps:
        return pruned, None
    calib, labels = images if images is not None else request.images(analysis.loaded)
    return recover(analysis, pruned, request.recipe, calib, ReconstructionSettings(seconds=request.seconds),
                   progress=progress, labels=labels, tuning=request.boxed_tuning)


# ---------------------------------------------------------------- export, measure, evaluate


def export(model: nn.Module, input_shape: Sequence[int], path: str | os.PathLike, opset: int = 17) -> float:
    """Write ONNX and return ONNX Runtime's max abs difference from PyTorch on a fixed input."""
    from latprune.onnx_export import export_checked
    from latprune.outputs import atomic_path

    with atomic_path(path) as tmp:
        return export_checked(model, tuple(input_shape), tmp, opset=opset)


def measure(models: Sequence[nn.Module], input_shape: Sequence[int], backend: str, rounds: int = 5, runs: int = 10,
            threads: int | None = None, global_warmup_s: float = 5.0) -> tuple[list[Measurement], dict]:
    """Latency of each model, timed interleaved in shuffled rounds in one process; and the device."""
    return measure_models(list(models), tuple(input_shape), backend, rounds=rounds, runs=runs, threads=threads,
                          global_warmup_s=global_warmup_s)


def measure_against_dense(dense: nn.Module, models: Sequence[nn.Module], input_shape: Sequence[int], backend: str,
                          rule: RoundsRule = RoundsRule(), threads: int | None = None, global_warmup_s: float = 5.0,
                          warn: bool = True, quiet_ms: float | None = None,
                          input_shapes: Sequence[tuple[int, ...]] | None = None) -> tuple[PairedTiming, dict]:
    """Each model's latency as its paired ratio to ``dense`` (same shuffled rounds, until every ratio is known to
    the rule's +-1.5% or its caps): the one way latprune claims a pruned network's latency; and the device.
    ``quiet_ms``: the dense model's quiet-state time here (:func:`quiet_dense_ms`), to leave out slow-state
    rounds; ``input_shapes``: the models' own where they differ from ``input_shape`` (:func:`measure_paired`)."""
    return measure_paired(dense, list(models), tuple(input_shape), backend, rule=rule, threads=threads,
                          global_warmup_s=global_warmup_s, warn=warn, quiet_ms=quiet_ms, input_shapes=input_shapes)


def quiet_dense_ms(db: str | os.PathLike | None, backend: str, loaded: LoadedModel,
                   threads: int | None = None) -> float | None:
    """The dense model's quiet-state time on this machine from its profile in ``db`` (None without one)."""
    return profiled_quiet_ms(db, backend, model_key(loaded), threads)


def evaluate(model: nn.Module, folder: str, preprocessing: Preprocessing | str, input_shape: Sequence[int],
             limit: int | None = None,
             batch_size: int | None = None, progress: bool = True, checked: bool = False) -> tuple[float, int]:
    """Top-1 accuracy on an ImageFolder (``limit``: the first N images); (top-1, images). Every image is decoded
    and checked first, unless ``checked`` says the caller has done so already (a run checks them before profiling
    and evaluates up to three models)."""
    from torch.utils.data import Subset

    from latprune.batching import batch_size_for
    from latprune.data import check_image_folder, evaluate_top1, image_folder

    dataset = (image_folder(folder, preprocessing, tuple(input_shape)) if checked else
               check_image_folder(folder, preprocessing, tuple(input_shape), progress=progress))
    _warn_on_class_mismatch(model, dataset.classes, folder, input_shape)
    if limit is not None:
        if limit < 1:
            raise LatpruneError(f"--limit must be at least 1, got {limit}")
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    return evaluate_top1(model, dataset, batch_size or batch_size_for(input_shape), progress), len(dataset)


def _warn_on_class_mismatch(model: nn.Module, classes: Sequence[str], folder: str, input_shape: Sequence[int]) -> None:
    """Say so when the folder's classes cannot be the model's (labels are folder indices in sorted order)."""
    import sys

    with torch.no_grad():
        outputs = model.eval()(torch.zeros(1, *tuple(input_shape)[1:])).shape[-1]
    if outputs != len(classes):
        print(f"latprune: warning: {folder} has {len(classes)} class folders but the model has {outputs} outputs; "
              f"top-1 assumes class folder i (sorted by name) is output i", file=sys.stderr)


# ---------------------------------------------------------------- report


def report(summary: RunSummary, out_dir: str | os.PathLike) -> RunSummary:
    """Write ``summary.json`` (atomically) and the self-contained ``report.html``; the summary naming them."""
    import json
    from pathlib import Path

    from latprune.outputs import atomic_path
    from latprune.report import write_report

    out = Path(out_dir)
    summary = summary.with_files({"summary": str(out / "summary.json"), "report": str(out / "report.html")})
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary.to_json(), indent=1))
    write_report(summary, out / "report.html")
    return summary
