"""Issue #25: the distillation fine-tune row: latprune's depth+width plan at 0.5x, two-stage, then a short
over-parameterised fine-tune with similarity-preserving distillation, no labels.

Takes latprune's 0.5x plan of cifar resnet56 from the pareto benchmark's rows (its widths; the kept channels
are the l2-best, as the planner keeps them), prunes it, repairs it with two-stage on 1,024 unlabeled train
images, then fine-tunes it over-parameterised (2x) with the dense network as teacher on the 10,000 train
images *without labels*, for the steps of ``--epochs`` that fit the time box (10 minutes on 2 cores; the
learning rate decays over those). Top-1 on all 10,000 CIFAR-10 test images.
Run: ``python -m benchmarks.depth_finetune [--epochs 10] [--fraction 0.5]`` after ``benchmarks.pareto`` (its
resumable cache), or on the plan recorded in ``results/pareto_depth_families.json``.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import CACHE, CIFAR10, RESULTS, SHARED, markdown_table, write_result
from benchmarks.finetune import train_tensors
from benchmarks.recovery import test_tensors, top1
from latprune import pipeline
from latprune.data import calibration_tensor
from latprune.planner.api import build_plan, prepare
from latprune.pruned_file import prune_loaded
from latprune.recovery import FinetuneSettings, recover

TIME_LIMIT_S = 600.0  # the goal: the whole fine-tune within 10 minutes on 2 cores
TIME_BOX_S = TIME_LIMIT_S - 30.0  # the training steps' box; the rest for expansion, merge and recalibration


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="one epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
    ours = _latprune_row(args.fraction)
    loaded = pipeline.load("cifar:resnet56", str(SHARED / "models" / "cifar10" / "resnet56-4bfd9763.th"))
    analysis = pipeline.analyse(loaded)
    inputs = prepare(analysis)  # l2 scores: the channels the planner keeps at these widths
    plan = build_plan(inputs, [ours["widths"][g.id] for g in analysis.groups], "latency-search", None)
    pruned = prune_loaded(analysis, plan.kept())
    calib = calibration_tensor(CIFAR10 / "train", "cifar", loaded.input_shape, size=1024, seed=0)
    images, labels = test_tensors(None)
    train_images, _ = train_tensors(None)
    began = time.perf_counter()
    repaired, _ = recover(analysis, pruned, "two-stage", calib)
    repair_s = time.perf_counter() - began
    repaired_top1 = top1(repaired.model, images, labels)
    began = time.perf_counter()
    tuned, report = recover(analysis, repaired, "overparam", train_images,
                            tuning=FinetuneSettings(epochs=args.epochs, seconds=TIME_BOX_S))
    tune_s = time.perf_counter() - began
    tuned_top1 = top1(tuned.model, images, labels)
    dense_top1 = top1(loaded.model, images, labels)
    data = {"fraction": args.fraction, "measured_over_dense": ours["measured_over_dense"],
            "removed_branches": len(plan.removed), "dense_top1": dense_top1, "two_stage_top1": repaired_top1,
            "two_stage_s": repair_s, "overparam_top1": tuned_top1, "overparam_s": tune_s, "epochs": args.epochs,
            "within_time_limit": tune_s <= TIME_LIMIT_S, "goal_81_met": tuned_top1 >= 0.81,
            "report": report.steps}
    tuning = report.steps[-1]
    table = markdown_table(["step", "top-1 %", "seconds"],
                           [["dense", f"{100 * dense_top1:.2f}", "-"],
                            ["latprune depth+width + two-stage (1,024 unlabeled)", f"{100 * repaired_top1:.2f}",
                             f"{repair_s:.0f}"],
                            [f"+ overparam SP-KD fine-tune, {tuning['steps']} of {tuning['steps_planned']} steps "
                             f"({args.epochs} epochs) in the {TIME_BOX_S:.0f} s box, 10,000 unlabeled",
                             f"{100 * tuned_top1:.2f}", f"{tune_s:.0f}"]])
    summary = (f"cifar resnet56, latprune's plan at {args.fraction}x of measured dense (measured "
               f"{ours['measured_over_dense']:.3f}x, {len(plan.removed)} branches removed).\n\n{table}\n\n"
               f"Two-stage at its default Adam rate (1e-3). Goal (#25): >= 81% within 10 minutes of fine-tuning "
               f"(expansion, training, merge and BatchNorm recalibration): "
               f"{'met' if data['goal_81_met'] and data['within_time_limit'] else 'NOT met'} "
               f"({100 * tuned_top1:.2f}% in {tune_s:.0f} s).")
    write_result("depth_finetune", data, summary)


def _latprune_row(fraction: float) -> dict:
    """latprune's row at ``fraction`` of resnet56's measured dense latency: from the pareto benchmark's cache when
    it is there, else from its recorded results."""
    cache = CACHE / "pareto_rows.json"
    if cache.exists():
        rows = json.loads(cache.read_text())[f"resnet56@{fraction}"]
    else:
        rows = [r for r in json.loads((RESULTS / "pareto_depth_families.json").read_text())["rows"]
                if r["model"] == "resnet56" and r["fraction"] == fraction]
    return next(r for r in rows if r["method"] == "latprune" and "widths" in r)


if __name__ == "__main__":
    main()
