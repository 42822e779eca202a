"""Issue #5: DP solver time on torchvision resnet50 (all 37 groups, 32 candidate widths each).

Goals: <= 10 ms at 2,000 bins and <= 50 ms at 10,000 bins after JIT warm-up. Records the
whole solve (bounding passes, binning, final DP, backtracking; the cost tables and exact
frontiers are built once per problem and cached) and the final DP pass alone, medians over
repeats. Run: ``python -m benchmarks.planner_solver [--db PATH] [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.common import DEFAULT_DB, markdown_table, perf_model_for, write_result
from latprune.analysis import analyse
from latprune.budget import BudgetRequest
from latprune.models import load_model
from latprune.planner.api import latency_plan, prepare
from latprune.planner.widths import WidthPolicy

GOALS_MS = {2000: 10.0, 10000: 50.0}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="profile database (profiled if missing)")
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--quick", action="store_true", help="resnet18 instead of resnet50, 3 repeats")
    args = parser.parse_args(argv)
    spec, repeats = ("torchvision:resnet18", 3) if args.quick else ("torchvision:resnet50", 9)
    loaded = load_model(spec)
    analysis = analyse(loaded)
    perf, _ = perf_model_for(analysis, args.backend, args.db)
    started = time.perf_counter()
    inputs = prepare(analysis, "l2", policy=WidthPolicy(aligned=False, max_count=32), perf=perf,
                     backend=args.backend)
    prepare_s = time.perf_counter() - started
    widths = [len(c) for c in inputs.latency_problem().candidates]
    started = time.perf_counter()
    # JIT compile, cost tables, exact frontiers: once
    latency_plan(inputs, inputs.resolve(BudgetRequest(speedup=2.0)), bins=2000)
    first_s = time.perf_counter() - started
    rows, runs = [], []
    for bins in GOALS_MS:
        for speedup in (1.5, 2.0):
            solves, finals, plan = [], [], None
            for _ in range(repeats):
                plan = latency_plan(inputs, inputs.resolve(BudgetRequest(speedup=speedup)), bins=bins)
                solves.append(plan.solver["solve_s"] * 1000)
                finals.append(plan.solver["dp_s"] * 1000)
            run = {"bins": bins, "speedup": speedup, "budget_ms": plan.budget_ms, "predicted_ms": plan.predicted_ms,
                   "solve_ms_median": statistics.median(solves), "solve_ms_all": solves,
                   "final_pass_ms_median": statistics.median(finals), "live_states": plan.solver["live_states"],
                   "passes": plan.solver["passes"], "method": plan.solver["method"], "goal_ms": GOALS_MS[bins],
                   "meets_goal": statistics.median(solves) <= GOALS_MS[bins]}
            runs.append(run)
            rows.append([spec, bins, f"{speedup}x", f"{run['solve_ms_median']:.1f}", f"{run['final_pass_ms_median']:.1f}",
                         run["live_states"], f"{GOALS_MS[bins]:.0f}", "yes" if run["meets_goal"] else "NO"])
    data = {"model": spec, "groups": len(widths), "min_widths_per_group": min(widths), "prepare_s": prepare_s,
            "first_solve_s_incl_jit_and_tables": first_s, "repeats": repeats, "runs": runs}
    summary = markdown_table(["model", "bins", "budget", "solve ms (median)", "final DP pass ms", "live states",
                              "goal ms", "met"], rows)
    summary += (f"\n\n{len(widths)} groups, >= {min(widths)} candidate widths each; first solve incl. JIT, cost "
                f"tables and frontiers {first_s:.1f} s; importance + problem set-up {prepare_s:.1f} s.")
    write_result("planner_solver" + ("_quick" if args.quick else ""), data, summary)


if __name__ == "__main__":
    main()
