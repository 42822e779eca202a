"""Which plan loss predicts a plan's accuracy after two-stage recovery: the planner's proxies, ranked.

The calibrated planner chooses between plans by a loss measured on unlabeled images; what the user gets is the
plan's accuracy after two-stage recovery. Plans of one model at one predicted budget (several seeds and time
boxes of the calibrated search, every family, several depths) are scored by each proxy below, then recovered by
two-stage on the 1,024 calibration images and scored on the whole test set. Reported per proxy: its Spearman
rank correlation with top-1 (a good proxy is near -1: lower loss, higher accuracy), how often it ranks a pair of
plans whose top-1 differ by more than 1 point the right way round, the top-1 of the plan it would choose,
and its seconds per plan. Each proxy is read two ways on its scored images: the KL divergence of the dense
outputs from the pruned ones (what the planner uses) and the disagreement, the share of images whose top class
differs from the dense network's (``... disagree``).

Proxies (S = the search's 256 images; the last quarter held out where a proxy fits weights):
- ``fast``: KL after BatchNorm recalibration on S (the search's own loss);
- ``ridge``: KL on S's held-out quarter after ridge reconstruction on the rest (the finalists' loss);
- ``two-stage-S``: the same with a time-boxed two-stage (``--short-seconds``) in place of ridge;
- ``ridge-1024`` / ``two-stage-1024``: the same on the 1,024 recovery images (768 fitted, 256 held out);
- ``final-held``: KL of the network two-stage really recovers (on all 1,024), on 1,024 other training images:
  the best any unlabeled proxy could do.

``python -m benchmarks.plan_proxy --model resnet56 --speedup 2`` (about 40 minutes on 2 cores); per-plan rows
are cached in ``benchmarks/.cache/<name>_rows.json`` so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks.common import (CACHE, CIFAR10, DEFAULT_DB, SHARED, environment, markdown_table, perf_model_for,
                               write_result)
from benchmarks.pareto import WEIGHTS, resumed_rows
from benchmarks.recovery import test_tensors, top1
from latprune import pipeline
from latprune.batching import forward_in_batches
from latprune.budget import BudgetRequest
from latprune.data import calibration_tensor
from latprune.defaults import IMPORTANCE_CALIB_SIZE, RECOVERY_CALIB_SIZE
from latprune.outputs import atomic_path
from latprune.plan_scoring import HELD_OUT_SHARE, disagreement
from latprune.planner import api as planner
from latprune.planner.damage import output_loss
from latprune.planner.search import CalibratedSearch, SearchSettings
from latprune.recovery.batchnorm import recalibrate_batchnorm
from latprune.pruned_file import prune_loaded
from latprune.recovery import recover
from latprune.recovery.reconstruction import ReconstructionSettings

PROXIES = ("fast", "ridge", "two-stage-S", "ridge-1024", "two-stage-1024", "final-held")


def candidate_plans(inputs, budget, search: CalibratedSearch, runs: list[tuple[int, float]], count: int) -> list:
    """Up to ``count`` distinct plans scored by the calibrated search in ``runs`` (seed, seconds): the best of
    each count of removed branches in turn, so every depth the searches reached is represented."""
    losses: dict[tuple[int, ...], float] = {}
    for seed, seconds in runs:
        run = CalibratedSearch(search.damage, search.loss, SearchSettings(seconds=seconds, seed=seed, finalists=0),
                               progress=True)
        run.plan(inputs, budget)
        losses.update(run.losses)
    by_depth: dict[int, list] = {}
    for widths, loss in sorted(losses.items(), key=lambda item: item[1]):
        by_depth.setdefault(len(inputs.removed_at(widths)), []).append(widths)
    chosen = []
    while len(chosen) < count and any(by_depth.values()):
        for depth in sorted(by_depth):
            if by_depth[depth] and len(chosen) < count:
                chosen.append(by_depth[depth].pop(0))
    return chosen


def losses(analysis, model: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """KL(dense || ``model``) on ``images`` and the share of them whose top class differs from the dense one's."""
    reference = forward_in_batches(analysis.model.eval(), images)
    outputs = forward_in_batches(model.eval(), images)
    return output_loss(reference, outputs), disagreement(reference, outputs)


def held_out_losses(analysis, kept, images: torch.Tensor, recipe: str, seconds: float | None) -> tuple:
    """:func:`losses` on the last ``HELD_OUT_SHARE`` of ``images`` after ``recipe`` on the rest, and its seconds."""
    began = time.perf_counter()
    held = max(1, round(len(images) * HELD_OUT_SHARE))
    fit, scored = images[:-held], images[-held:]
    repaired, _ = recover(analysis, prune_loaded(analysis, kept), recipe, fit,
                          settings=ReconstructionSettings(seconds=seconds))
    return *losses(analysis, repaired.model, scored), time.perf_counter() - began


def score_plan(analysis, inputs, widths, calib, extra, test, short_seconds: float) -> dict:
    kept = inputs.kept_at(widths)
    search_images = calib[:IMPORTANCE_CALIB_SIZE]
    row: dict = {"widths": list(widths), "seconds": {}}
    began = time.perf_counter()
    pruned = prune_loaded(analysis, kept).model
    recalibrate_batchnorm(pruned, search_images)
    row["fast"], row["fast disagree"] = losses(analysis, pruned, search_images)
    row["seconds"]["fast"] = time.perf_counter() - began
    for name, images, recipe, seconds in [("ridge", search_images, "ridge", None),
                                          ("two-stage-S", search_images, "two-stage", short_seconds),
                                          ("ridge-1024", calib, "ridge", None),
                                          ("two-stage-1024", calib, "two-stage", short_seconds)]:
        row[name], row[f"{name} disagree"], row["seconds"][name] = held_out_losses(analysis, kept, images, recipe,
                                                                                    seconds)
    began = time.perf_counter()
    recovered, report = recover(analysis, prune_loaded(analysis, kept), "two-stage", calib)
    row["recovery_s"] = report.seconds
    row["final-held"], row["final-held disagree"] = losses(analysis, recovered.model, extra)
    row["seconds"]["final-held"] = time.perf_counter() - began
    row["top1"] = top1(recovered.model, *test)
    row["removed_branches"] = len(inputs.removed_at(widths))
    row["narrowed_groups"] = sum(0 < w < g.width for w, g in zip(widths, inputs.groups))
    row["macs_fraction"] = inputs.macs.cost_of_widths(list(widths)) / inputs.macs.cost_of_widths(inputs.full_widths)
    row["predicted_fraction"] = inputs.latency_problem().cost_of_widths(list(widths)) / inputs.dense_ms()
    return row


def proxy_summary(rows: list[dict]) -> list[dict]:
    """Per proxy: rank correlation with top-1, pairs (top-1 more than 1 point apart) ordered right, the top-1 of
    the plan it ranks first, and its mean seconds per plan."""
    top = [r["top1"] for r in rows]
    pairs = [(i, j) for i in range(len(rows)) for j in range(len(rows)) if top[i] - top[j] > 0.01]
    summary = []
    for proxy in PROXIES:
        for reading in (proxy, f"{proxy} disagree"):
            loss = [r[reading] for r in rows]
            right = sum(loss[i] < loss[j] for i, j in pairs)
            summary.append({"proxy": reading, "spearman": float(spearmanr(loss, top).statistic),
                            "pairs_right": right, "pairs": len(pairs), "chosen_top1": top[int(np.argmin(loss))],
                            "seconds_per_plan": float(np.mean([r["seconds"][proxy] for r in rows]))})
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56", choices=sorted(WEIGHTS))
    parser.add_argument("--speedup", type=float, default=2.0, help="of the predicted dense latency")
    parser.add_argument("--plans", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3, help="searches per time box (15 s and 45 s)")
    parser.add_argument("--short-seconds", type=float, default=15.0, help="time box of the short two-stage proxies")
    parser.add_argument("--quick", action="store_true", help="4 plans from one seed, 1,000 test images")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.plans, args.seeds = 4, 1
    name = args.name or f"plan_proxy_{args.model}" + ("_quick" if args.quick else "")
    cache = CACHE / f"{name}_rows.json"
    done = resumed_rows(cache)
    plans = [tuple(p) for p in json.loads(cache.read_text()).get("plans", [])] if done else []

    torch.manual_seed(0)
    loaded = pipeline.load(f"cifar:{args.model}", str(SHARED / "models" / "cifar10" / WEIGHTS[args.model]))
    analysis = pipeline.analyse(loaded)
    perf, fitted = perf_model_for(analysis, "ort-cpu", DEFAULT_DB)
    images = calibration_tensor(CIFAR10 / "train", "cifar", loaded.input_shape,
                                size=2 * RECOVERY_CALIB_SIZE, seed=0)
    calib, extra = images[:RECOVERY_CALIB_SIZE], images[RECOVERY_CALIB_SIZE:]
    test = test_tensors(1000 if args.quick else None)
    settings = pipeline.PlanSettings(objective="calibrated")
    inputs = planner.prepare(analysis, importance=settings.importance, calib=calib[:IMPORTANCE_CALIB_SIZE],
                             policy=settings.policy(fitted.alignment_step, analysis.groups), perf=perf,
                             backend="ort-cpu", device=fitted.device)
    budget = inputs.resolve(BudgetRequest(speedup=args.speedup))
    if not plans:  # a resumed run scores the plans it chose before: searches in a time box differ run to run
        search = pipeline.calibrated_search(inputs, settings, calib[:IMPORTANCE_CALIB_SIZE])
        runs = [(seed, seconds) for seconds in (15.0, 45.0) for seed in range(args.seeds)]
        plans = candidate_plans(inputs, budget, search, runs, args.plans)
    for widths in plans:
        key = ",".join(map(str, widths))
        if all(f"{proxy} disagree" in done.get(key, {}) for proxy in PROXIES):
            continue
        done[key] = score_plan(analysis, inputs, widths, calib, extra, test, args.short_seconds)
        print(json.dumps({k: done[key][k] for k in ("removed_branches", "narrowed_groups", "top1", *PROXIES)}),
              flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps({"environment": environment(), "plans": plans, "rows": done}, indent=1))
    rows = [done[",".join(map(str, w))] for w in plans]
    summary = proxy_summary(rows)
    plan_table = markdown_table(
        ["branches removed", "groups narrowed", "MACs", "top-1 (%)", *(f"{p}: KL / disagree" for p in PROXIES)],
        [[r["removed_branches"], r["narrowed_groups"], f"{r['macs_fraction']:.2f}", f"{100 * r['top1']:.2f}",
          *(f"{r[p]:.3f} / {100 * r[p + ' disagree']:.1f}%" for p in PROXIES)]
         for r in sorted(rows, key=lambda r: -r["top1"])])
    proxy_table = markdown_table(
        ["proxy", "Spearman with top-1", "pairs ordered right (> 1 point apart)", "top-1 of its choice (%)",
         "s / plan"],
        [[s["proxy"], f"{s['spearman']:+.2f}", f"{s['pairs_right']}/{s['pairs']}", f"{100 * s['chosen_top1']:.2f}",
          f"{s['seconds_per_plan']:.1f}"] for s in summary])
    tops = [100 * r["top1"] for r in rows]
    text = (f"cifar:{args.model} at {args.speedup:g}x of predicted dense (ort-cpu), {len(rows)} plans from the "
            f"calibrated search ({args.seeds} seeds x 15 s and 45 s); two-stage on {RECOVERY_CALIB_SIZE} calibration "
            f"images, top-1 on {len(test[0]):,} test images (best plan {max(tops):.2f}%, worst {min(tops):.2f}%). "
            f"Short two-stage proxies: {args.short_seconds:g} s box; Spearman with ties given their mean rank.\n\n"
            f"{proxy_table}\n\n{plan_table}")
    write_result(name, {"model": args.model, "speedup": args.speedup, "short_seconds": args.short_seconds,
                        "proxies": summary, "rows": rows}, text)


if __name__ == "__main__":
    main()
