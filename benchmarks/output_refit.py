"""Issue #25: two-stage with and without its closing refit of the output layer, on plans the pareto benchmark chose.

For each plan (its widths from a pareto result; the kept channels the l2-best, as the planner keeps them): prune
cifar resnet56, two-stage on the 1,024 unlabeled train images every pareto method recovers on, with the output
layer left as phase 2 leaves it, then refitted (:func:`latprune.recovery.output_layer.refit_output_layer`, what
two-stage now ends with; it keeps the network's function otherwise, so one phase 2 serves both rows). Recorded per
plan and version: top-1 on all 10,000 test images, the norm of the logits over the dense network's (test images),
and top-class disagreement with the dense network on the next 1,024 train images (what the planner's last stage
scores). Run: ``python -m benchmarks.output_refit [--plans RESULT:METHOD,...] [--fraction 0.5] [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from benchmarks.common import CIFAR10, RESULTS, SHARED, markdown_table, write_result
from benchmarks.recovery import test_tensors
from latprune import pipeline
from latprune.batching import forward_in_batches
from latprune.data import calibration_tensor
from latprune.plan_scoring import disagreement
from latprune.planner.api import build_plan, prepare
from latprune.recovery import recover
from latprune.recovery.output_layer import refit_output_layer
from latprune.recovery.reconstruction import ReconstructionSettings

PLANS = ("pareto_avx512_repeat_r56:latprune,pareto_avx512_repeat_r56:depth-only,"
         "pareto_avx512_selection_r56:latprune,pareto_avx512_selection_r56:depth-only,"
         "pareto_avx512_state_r56:latprune,pareto_avx512_family_box_r56:depth-only,"
         "pareto_avx512_families:latprune,pareto_avx512_families:depth-only")
LAST_BRANCH = "layer3.8.removed_branch"  # the branch id of the last residual block


def _row_of(result: str, method: str, fraction: float) -> dict:
    data = json.loads((RESULTS / f"{result}.json").read_text())
    rows = data["rows"] if isinstance(data["rows"], list) else [r for v in data["rows"].values() for r in v]
    return next(r for r in rows if r.get("model") == "resnet56" and r.get("fraction") == fraction
                and r.get("method") == method and r.get("recovery") == "two-stage")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", default=PLANS, help="comma-separated RESULT:METHOD (pareto result files' rows)")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="the first two plans only")
    parser.add_argument("--name", default="", help="result name (default: output_refit, or output_refit_quick)")
    args = parser.parse_args(argv)
    picks = args.plans.split(",")[:2 if args.quick else None]
    name = args.name or ("output_refit_quick" if args.quick else "output_refit")
    loaded = pipeline.load("cifar:resnet56", str(SHARED / "models" / "cifar10" / "resnet56-4bfd9763.th"))
    analysis = pipeline.analyse(loaded)
    inputs = prepare(analysis)  # l2 scores: the channels the planner keeps at these widths
    drawn = calibration_tensor(CIFAR10 / "train", "cifar", loaded.input_shape, size=2048, seed=0)  # as pareto's
    calib, held = drawn[:1024], drawn[1024:]
    images, labels = test_tensors(None)
    dense_test, dense_held = forward_in_batches(loaded.model.eval(), images), forward_in_batches(loaded.model, held)
    dense_norm = float(dense_test.norm(dim=1).mean())

    def scored(model) -> dict:
        out = forward_in_batches(model.eval(), images)
        return {"top1": float((out.argmax(1) == labels).float().mean()),
                "logit_norm_over_dense": float(out.norm(dim=1).mean()) / dense_norm,
                "held_out_disagreement": disagreement(dense_held, forward_in_batches(model, held))}

    rows = []
    for pick in picks:
        result, method = pick.split(":")
        source = _row_of(result, method, args.fraction)
        plan = build_plan(inputs, [source["widths"][g.id] for g in analysis.groups], method, None)
        began = time.perf_counter()
        recovered, _ = recover(analysis, pipeline.prune(analysis, plan), "two-stage", calib,
                               ReconstructionSettings(refit_output=False))
        phase2_only = scored(recovered.model)
        refitted = copy.deepcopy(recovered.model)
        refit_began = time.perf_counter()
        refit = refit_output_layer(refitted, loaded.model, calib, ReconstructionSettings.ridge)
        refit_s = time.perf_counter() - refit_began
        rows.append({"result": result, "method": method, "removed_branches": len(plan.removed),
                     "last_block_removed": LAST_BRANCH in plan.removed, "macs_fraction": plan.macs / plan.dense_macs,
                     "measured_over_dense": source["measured_over_dense"], "top1_in_result": source["top1"],
                     "without_refit": phase2_only, "with_refit": scored(refitted), "refit": refit.to_json(),
                     "refit_s": refit_s, "seconds": time.perf_counter() - began})
        print(json.dumps({k: rows[-1][k] for k in ("result", "method", "without_refit", "with_refit")}), flush=True)
    write_result(name, {"fraction": args.fraction, "rows": rows}, summary(rows, args.fraction))


def summary(rows: list[dict], fraction: float) -> str:
    """The readable table of the rows."""
    table = markdown_table(
        ["plan", "branches removed", "last block removed", "MACs", "top-1 without refit", "with refit",
         "logit norm / dense", "held-out disagreement"],
        [[f"{r['result']} {r['method']}", r["removed_branches"], "yes" if r["last_block_removed"] else "no",
          f"{r['macs_fraction']:.2f}", f"{100 * r['without_refit']['top1']:.2f}",
          f"**{100 * r['with_refit']['top1']:.2f}**",
          f"{r['without_refit']['logit_norm_over_dense']:.2f} -> {r['with_refit']['logit_norm_over_dense']:.2f}",
          f"{r['without_refit']['held_out_disagreement']:.3f} -> {r['with_refit']['held_out_disagreement']:.3f}"]
         for r in rows])
    return (f"cifar resnet56 plans at {fraction}x of measured dense from earlier pareto runs, two-stage on 1,024 "
            "unlabeled train images, its output layer as phase 2 leaves it and refitted; top-1 on all 10,000 test "
            "images; held-out disagreement on the next 1,024 train images.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
