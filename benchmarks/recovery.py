"""Issue #6: post-training recovery on real CIFAR-10 (shared checkpoints), no labels used.

(a) structured: uniform plans at 0.5x and 0.35x of the dense MACs (l2 importance, widths
    in steps of 4, inner channels only: residual streams held at full width); recipes none /
    bn / layerwise / asr / two-stage / two-stage+asr, plus the closed-form ridge and ridge+asr.
    Issue #16: latency plans at 0.5x of the dense model's *measured* ort-cpu latency (closed
    loop, latency DP), pruning the residual streams through the option-A shortcuts (l2 and
    sensitivity importance) and holding them (inner channels only, l2, as before #16); recipes
    bn and two-stage. The fastest plan with and without the streams (every group at its
    narrowest width) is measured too: all plans and the dense model interleaved in one timing
    session, relative latency paired round by round. Needs a quiet machine (``--no-latency``
    skips these cases).
(b) unstructured: global magnitude sparsity 50/70/80/90%; none / bn / layerwise / asr.

Calibration: 1,024 images from ``train/`` (seed 0); accuracy on all 10,000 ``test/`` images.
Each row records the recovery's wall time. Results are rewritten after every row.
Run: ``python -m benchmarks.recovery [--suite structured|unstructured|all] [--models resnet20,resnet56] [--quick]
[--no-latency] [--db PATH]``.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from benchmarks.common import CIFAR10, DEFAULT_DB, SHARED, markdown_table, perf_model_for, write_result
from latprune import pipeline
from latprune.batching import forward_in_batches
from latprune.budget import BudgetRequest
from latprune.errors import LatpruneError
from latprune.profiler.api import RoundsRule, measure_paired
from latprune.data import calibration_tensor, image_folder
from latprune.analysis import analyse
from latprune.models import load_model
from latprune.planner.api import build_plan, prepare, uniform_plan
from latprune.planner.widths import WidthPolicy
from latprune.pruned_file import PrunedModel, prune_loaded
from latprune.recovery import recover
from latprune.sparsity import global_magnitude_sparsify, weight_sparsity
from latprune.surgery import count_parameters

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
STRUCTURED = ["none", "bn", "layerwise", "asr", "two-stage", "two-stage+asr", "ridge", "ridge+asr"]
UNSTRUCTURED = ["none", "bn", "layerwise", "asr"]
MACS_LEVELS = [0.5, 0.35]
LATENCY_BACKEND = "ort-cpu"
LATENCY_FRACTION = 0.5
LATENCY_RECIPES = ["bn", "two-stage"]
LATENCY_PLANS = {  # label: (held groups, importance)
    "through shortcuts, l2": ((), "l2"),
    "through shortcuts, sensitivity": ((), "sensitivity"),
    "inner channels only, l2": ((pipeline.HOLD_CHANNEL_OPS,), "l2"),
}
FASTEST = {"through shortcuts": (), "inner channels only": (pipeline.HOLD_CHANNEL_OPS,)}
TIMING_ROUNDS = 7
SPARSITIES = [0.5, 0.7, 0.8, 0.9]


def test_tensors(limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = image_folder(CIFAR10 / "test", "cifar", (1, 3, 32, 32))
    loader = torch.utils.data.DataLoader(dataset, batch_size=500, num_workers=2)
    images, labels = zip(*loader)
    images, labels = torch.cat(images), torch.cat(labels)
    if limit:
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:limit]
        images, labels = images[keep], labels[keep]
    return images, labels


def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 of ``model`` on ``images`` (in batches sized by the images, as latprune evaluates)."""
    model.eval()
    return float((forward_in_batches(model, images).argmax(1) == labels).float().mean())


def uniform_for_macs(analysis, level: float, step: int = 4):
    """The largest uniform keep ratio (widths in multiples of ``step``) whose MACs are at most ``level`` x dense.

    Residual streams (groups crossing the option-A shortcut) are held at full width, as in the results of
    earlier versions: these cases compare recovery methods on one fixed kind of plan."""
    hold = pipeline.held_groups([pipeline.HOLD_CHANNEL_OPS], analysis.groups)
    inputs = prepare(analysis, "l2", policy=WidthPolicy(step=step, hold=hold))
    dense = inputs.macs.cost_of_widths(inputs.full_widths)
    low, high = 0.01, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        plan = uniform_plan(inputs, mid)
        if inputs.macs.cost_of_widths([plan.widths()[g.id] for g in inputs.groups]) <= level * dense:
            low = mid
        else:
            high = mid
    plan = uniform_plan(inputs, low)
    return plan, inputs.macs.cost_of_widths([plan.widths()[g.id] for g in inputs.groups]) / dense


def _fastest_plan(analysis, hold: tuple[str, ...], step: int):
    """Every group at its narrowest candidate width on the planner's grid (held groups at full width)."""
    inputs = prepare(analysis, policy=pipeline.PlanSettings(hold=hold).policy(step, analysis.groups))
    return build_plan(inputs, inputs.macs.widths(inputs.macs.fastest()), "fastest", None)


def latency_cases(analysis, calib: torch.Tensor, db) -> tuple[list[tuple], dict]:
    """Closed-loop latency plans at 0.5x measured dense (through the shortcuts with l2 and with sensitivity
    importance, inner channels only with l2) and the fastest plan with and without the streams; returns the
    cases to recover and the timing record (one interleaved session)."""
    _, fitted = perf_model_for(analysis, LATENCY_BACKEND, db)
    fastest = {label: _fastest_plan(analysis, hold, fitted.alignment_step) for label, hold in FASTEST.items()}
    plans, failures = {}, {}
    for label, (hold, importance) in LATENCY_PLANS.items():
        perf, fitted = pipeline.fit(db, LATENCY_BACKEND)  # with what the previous loops measured
        try:
            plans[label] = pipeline.plan(analysis, BudgetRequest(speedup=1 / LATENCY_FRACTION), perf, fitted,
                                         LATENCY_BACKEND, pipeline.PlanSettings(importance=importance, hold=hold),
                                         calib=calib, verify=pipeline.Verification(db=db, progress=False))
        except LatpruneError as exc:
            failures[label] = str(exc)
            print(f"{analysis.spec} {label}: {exc}", flush=True)
    timed = [("plan", label, p) for label, p in plans.items()] + [("fastest", label, p) for label, p in fastest.items()]
    pruned = [prune_loaded(analysis, p.kept()) for _, _, p in timed]
    paired, _ = measure_paired(analysis.model, [p.model for p in pruned], analysis.input_shape, LATENCY_BACKEND,
                               rule=RoundsRule(min_rounds=TIMING_ROUNDS, max_rounds=max(TIMING_ROUNDS, 60),
                                               max_seconds=300.0))
    dense, measured = paired.reference, [paired.reference, *paired.networks]
    timing = {"backend": LATENCY_BACKEND, "fraction": LATENCY_FRACTION, "dense_ms": dense.median_ms,
              "dense_spread": dense.spread, "failures": failures, "plans": []}
    cases = []
    for (kind, label, plan), model, m, interval in zip(timed, pruned, measured[1:], paired.ratios):
        relative = interval.ratio
        loop = plan.verification if plan.verification and plan.verification.verified else None
        timing["plans"].append({
            "kind": kind, "label": label, "relative": relative, "measured_ms": m.median_ms, "spread": m.spread,
            "widths": plan.widths(), "loop_status": loop.status if loop else None,
            "loop_relative": loop.measured_ms / loop.dense_measured_ms if loop else None})
        print(f"{analysis.spec} {kind} {label}: {relative:.3f}x dense (spread {100 * m.spread:.1f}%)", flush=True)
        if kind == "plan":
            cases.append(("latency", f"{LATENCY_FRACTION:g}x measured {LATENCY_BACKEND} (loop "
                                     f"{timing['plans'][-1]['loop_relative']:.3f}x, check {relative:.3f}x), {label}",
                          model, LATENCY_RECIPES))
    return cases, timing


def run(suite: str, models: list[str], quick: bool, latency: bool = True, db=DEFAULT_DB) -> None:
    torch.manual_seed(0)
    images, labels = test_tensors(1000 if quick else None)
    rows, records, timings = [], [], {}
    name = ("recovery" if suite == "all" else f"recovery_{suite}") + ("_quick" if quick else "")
    for arch in models:
        loaded = load_model(f"cifar:{arch}", weights=str(SHARED / "models" / "cifar10" / CHECKPOINTS[arch]))
        calib = calibration_tensor(CIFAR10 / "train", "cifar", loaded.input_shape,
                                   size=256 if quick else 1024, seed=0)
        dense_top1 = top1(loaded.model, images, labels)
        analysis = analyse(loaded)
        cases = []
        if suite in ("structured", "all"):
            for level in MACS_LEVELS:
                plan, macs = uniform_for_macs(analysis, level)
                pruned = prune_loaded(analysis, plan.kept())
                label = f"{level:g}x MACs, inner channels (keep {plan.solver['ratio']:.2f}, {macs:.3f}x)"
                cases.append(("structured", label, pruned, STRUCTURED))
            if latency and not quick:
                found, timings[arch] = latency_cases(analysis, calib, db)
                cases += found
        if suite in ("unstructured", "all"):
            for sparsity in SPARSITIES:
                model = copy.deepcopy(loaded.model)
                global_magnitude_sparsify(model, sparsity)
                pruned = PrunedModel(model, loaded.spec, loaded.input_shape, {}, loaded.family,
                                     {"sparsity": sparsity})
                cases.append(("unstructured", f"{weight_sparsity(model):.0%} sparse", pruned, UNSTRUCTURED))
        for kind, label, pruned, recipes in cases:
            for recipe in recipes:
                started = time.perf_counter()
                recovered, report = recover(analysis, pruned, recipe, calib)
                seconds = time.perf_counter() - started
                accuracy = top1(recovered.model, images, labels)
                record = {
                    "model": arch, "kind": kind, "pruning": label, "recipe": recipe,
                    "top1": round(accuracy, 4), "dense_top1": round(dense_top1, 4),
                    "drop_points": round(100 * (dense_top1 - accuracy), 2),
                    "recovery_s": round(seconds, 1), "calibration_images": len(calib),
                    "tap_error_before": round(report.error_before, 4), "tap_error_after": round(report.error_after, 4),
                    "parameters": count_parameters(recovered.model), "steps": report.steps,
                }
                records.append(record)
                rows.append([arch, label, recipe, f"{100 * accuracy:.2f}", f"{record['drop_points']:.2f}",
                             f"{seconds:.1f}", f"{report.error_before:.2f} -> {report.error_after:.2f}"])
                table = markdown_table(["model", "pruning", "recovery", "top-1 %", "drop (points)", "recovery s",
                                        "tap error"], rows)
                header = (f"Calibration: {len(calib)} unlabeled train images; accuracy on {len(images)} test images. "
                          "Tap error: summed relative squared error of every layer output against the dense "
                          "network's (kept channels), on the calibration images.\n\n")
                write_result(name, {"quick": quick, "rows": records, "latency": timings},
                             header + table + _latency_summary(timings))


def _latency_summary(timings: dict) -> str:
    """Measured latency of the latency-planned cases and of the fastest plans, relative to dense."""
    if not timings:
        return ""
    rows = [[arch, t["backend"], p["kind"], p["label"],
             "-" if p["loop_relative"] is None else f"{p['loop_relative']:.3f}x", f"{p['relative']:.3f}x",
             f"{p['measured_ms']:.3f}", f"{100 * p['spread']:.1f}%"]
            for arch, t in timings.items() for p in t["plans"]]
    rows += [[arch, t["backend"], "plan", label, "infeasible", "-", "-", reason[:100]]
             for arch, t in timings.items() for label, reason in t["failures"].items()]
    dense = "; ".join(f"{arch} dense {t['dense_ms']:.3f} ms (spread {100 * t['dense_spread']:.1f}%)"
                      for arch, t in timings.items())
    return ("\n\n## Latency plans: pruning through the option-A shortcuts vs inner channels only\n\n"
            f"Closed loop at --speedup {1 / LATENCY_FRACTION:g} (its own measurement: \"loop\"), then one check "
            f"session per model, every plan interleaved with the dense model ({dense}); check = paired per-round "
            "ratio. \"fastest\": every group at its narrowest candidate width.\n\n"
            + markdown_table(["model", "backend", "plan", "channels pruned, importance", "loop / dense",
                              "check / dense", "check ms", "check round spread"], rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["structured", "unstructured", "all"], default="all")
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--quick", action="store_true", help="256 calibration and 1,000 test images")
    parser.add_argument("--no-latency", action="store_true", help="skip the measured-latency plans (#16)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="profile database (profiled if missing)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run(args.suite, [m.strip() for m in args.models.split(",") if m.strip()], args.quick, not args.no_latency,
        args.db)


if __name__ == "__main__":
    main()
