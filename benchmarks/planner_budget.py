"""Issues #14 and #26: do plans hold on the device once the closed loop has measured them?

For each model and backend, budgets of 0.35-0.9x the dense model's *measured* latency (a
``--speedup`` of 1 / fraction; at 0.5 and 0.7 also as ``--budget-ms`` of that many
milliseconds) are planned with the closed loop (latency DP, l2 importance, verification on:
measure, learn, re-plan until the measured latency lies in [0.97, 1.0] x budget, at most 4
rounds). Every returned plan is then measured once more, independently, interleaved with the
dense model in one session, until each plan's paired ratio to the dense model is known to
+-1.5% (95% interval) or a cap; "check: measured / budget" is that ratio over the requested
ratio (the fraction for a speedup; for a budget in ms, the ratio the loop converted it to:
budget / the dense latency it measured).

Goals (#26): the check within [0.95, 1.02] x budget in >= 90% of plans and never above 1.05x;
median rounds <= 2; the seconds the loop adds per plan are recorded. Round 1 of each loop is
the open-loop plan (what latprune returned before the loop), so its measured/budget is the baseline.
Run: ``python -m benchmarks.planner_budget [--db PATH] [--backends ort-cpu,torch-cpu] [--models ...] [--fractions
0.35,0.5,...] [--quick] [--noise spells] [--keep-other-models]`` (the last adds the models run now to the result
file's other models, measured earlier on this CPU under the same noise).
Run it alone: any other load on the machine moves the numbers (``--noise spells`` adds load on purpose, the
same way every run, to show the rules on a noisy host: see ``benchmarks/host_noise.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.common import DEFAULT_DB, RESULTS, markdown_table, perf_model_for, same_machine, write_result
from benchmarks.host_noise import NoiseSpec, add_noise_option, noise_spec, noisy_host
from latprune import pipeline
from latprune.budget import BudgetRequest
from latprune.errors import LatpruneError
from latprune.profiler.api import RoundsRule, measure_models, measure_paired
from latprune.pruned_file import prune_loaded

MODELS = ["torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v2", "torchvision:efficientnet_b0",
          "torchvision:regnet_x_400mf", "cifar:resnet56"]
FRACTIONS = [0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
MS_FRACTIONS = (0.5, 0.7)  # also requested as --budget-ms
CHECK_ROUNDS = 7
CHECK_RULE = RoundsRule(min_rounds=10, max_rounds=60, max_seconds=240.0)


def run_model(spec: str, backend: str, db: Path, fractions) -> list[dict]:
    analysis = pipeline.analyse(pipeline.load(spec))
    loaded = analysis.loaded
    perf_model_for(analysis, backend, db)  # profiled once per device and backend
    (dense,), _ = measure_models([loaded.model], loaded.input_shape, backend, rounds=CHECK_ROUNDS, runs=10)
    cases, plans = [], []
    requests = [(f, "speedup") for f in fractions] + [(f, "ms") for f in fractions if f in MS_FRACTIONS]
    for fraction, kind in requests:
        case = {"model": spec, "backend": backend, "fraction": fraction, "request": kind,
                "budget_ms": fraction * dense.median_ms, "dense_measured_ms": dense.median_ms}
        request = (BudgetRequest(speedup=1 / fraction) if kind == "speedup" else
                   BudgetRequest(budget_ms=fraction * dense.median_ms))
        perf, fitted = pipeline.fit(db, backend)  # whatever the previous loops taught the model
        verify = pipeline.Verification(db=db, progress=False)
        try:
            plan = pipeline.plan(analysis, request, perf, fitted, backend, verify=verify)
        except LatpruneError as exc:
            case["infeasible" if "below the fastest" in str(exc) else "failed"] = str(exc)
            cases.append(case)
            print(f"{spec} {backend} {fraction} ({kind}): {exc}", flush=True)
            continue
        loop = plan.verification
        first = loop.rounds[0]
        case.update(status=loop.status, rounds_used=loop.rounds_used, loop_s=loop.seconds,
                    open_loop_predicted_ms=first.predicted_ms, open_loop_measured_ms=first.measured_ms,
                    open_loop_over_budget=first.measured_ms / first.budget_ms,
                    loop_measured_ms=loop.measured_ms, loop_over_budget=loop.measured_ms / loop.budget_ms,
                    loop_relative=loop.chosen.relative_to_dense,
                    # the ratio the request stands for: the fraction, or a budget in ms over the loop's dense
                    requested_ratio=(fraction if kind == "speedup" else loop.budget_ms / loop.dense_measured_ms),
                    predicted_ms=plan.predicted_ms, rounds=[r.to_json() for r in loop.rounds],
                    widths=plan.widths())
        print(f"{spec} {backend} {fraction} ({kind}): {loop.status} in {loop.rounds_used} round(s), "
              f"{case['loop_over_budget']:.3f} x budget (open loop {case['open_loop_over_budget']:.3f})", flush=True)
        cases.append(case)
        plans.append(plan)
    if plans:  # the independent check: every returned plan and the dense model, interleaved in one session
        models = [prune_loaded(analysis, p.kept()).model for p in plans]
        timing, _ = measure_paired(loaded.model, models, loaded.input_shape, backend, rule=CHECK_RULE)
        checked = iter(range(len(models)))
        for case in cases:
            if "rounds_used" in case:
                i = next(checked)
                ratio, m = timing.ratios[i], timing.networks[i]
                case.update(check_dense_ms=timing.reference.median_ms, check_measured_ms=timing.derived_ms(i),
                            check_relative=ratio.ratio, check_interval=[ratio.low, ratio.high],
                            check_rounds=ratio.rounds, check_converged=timing.converged,
                            check_over_budget=ratio.ratio / case["requested_ratio"],
                            check_over_loop=ratio.ratio / case["loop_relative"],
                            check_unpaired_over_budget=m.median_ms / (case["requested_ratio"]
                                                                      * timing.reference.median_ms),
                            check_spread=m.spread, check_dense_spread=timing.reference.spread)
    return cases


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="profile database (profiled if missing)")
    parser.add_argument("--backends", default="ort-cpu,torch-cpu")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--quick", action="store_true", help="cifar resnet56 on ort-cpu, three budgets")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)),
                        help="budgets as fractions of the measured dense latency")
    parser.add_argument("--name", default="planner_budget", help="result file name")
    parser.add_argument("--keep-other-models", action="store_true",
                        help="keep the result file's cases of models not run now (same CPU only)")
    add_noise_option(parser)
    args = parser.parse_args(argv)
    noise = noise_spec(args.noise)
    backends = ["ort-cpu"] if args.quick else [b for b in args.backends.split(",") if b]
    models = ["cifar:resnet56"] if args.quick else [m for m in args.models.split(",") if m]
    fractions = [0.5, 0.7, 0.9] if args.quick else [float(f) for f in args.fractions.split(",") if f]
    name = args.name + ("_quick" if args.quick else "")
    cases = earlier_cases(name, models, noise) if args.keep_other_models else []
    with noisy_host(noise):
        for backend in backends:
            for spec in models:  # the result file is rewritten after every model: nothing is lost on interruption
                cases += run_model(spec, backend, args.db, fractions)
                write_result(name, {"cases": cases, **_goals(cases), "host_noise": noise and noise.to_json()},
                             _summary(cases, noise))


def earlier_cases(name: str, models: list[str], noise: NoiseSpec | None) -> list[dict]:
    """The cases of other models in an existing result file, when it was measured on this CPU under the same noise."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    if not same_machine(earlier["environment"]):
        raise SystemExit(f"{path} was measured on another machine ({earlier['environment'].get('cpu_id')}); "
                         "its cases cannot stand beside this one's")
    if earlier.get("host_noise") != json.loads(json.dumps(noise and noise.to_json())):  # as JSON holds it: lists
        raise SystemExit(f"{path} was measured under other host noise; run without --keep-other-models")
    return [{"measured_on": earlier["environment"]["date"], **c} for c in earlier["cases"] if c["model"] not in models]


def _goals(cases: list[dict]) -> dict:
    planned = [c for c in cases if "check_over_budget" in c]
    n = max(len(planned), 1)
    return {
        "plans": len(planned),
        "failed": sum("failed" in c for c in cases),
        "infeasible": sum("infeasible" in c for c in cases),
        "within_102pct": sum(c["check_over_budget"] <= 1.02 for c in planned) / n,
        "at_least_95pct": sum(c["check_over_budget"] >= 0.95 for c in planned) / n,
        "in_95_102pct": sum(0.95 <= c["check_over_budget"] <= 1.02 for c in planned) / n,
        "max_check_over_budget": max((c["check_over_budget"] for c in planned), default=None),
        "within_3pct_of_loop": sum(abs(c["check_over_loop"] - 1) <= 0.03 for c in planned) / n,
        "loop_within_100pct": sum(c["loop_over_budget"] <= 1.0 for c in planned) / n,
        "open_loop_within_102pct": sum(c["open_loop_over_budget"] <= 1.02 for c in planned) / n,
        "open_loop_at_least_95pct": sum(c["open_loop_over_budget"] >= 0.95 for c in planned) / n,
        "median_rounds": statistics.median([c["rounds_used"] for c in planned]) if planned else None,
        "median_loop_s": statistics.median([c["loop_s"] for c in planned]) if planned else None,
        "median_check_spread": statistics.median([c["check_spread"] for c in planned]) if planned else None,
    }


def _summary(cases: list[dict], noise: NoiseSpec | None) -> str:
    rows = []
    for c in cases:
        head = [c["model"], c["backend"], f"{c['fraction']:.2f}", c.get("request", "speedup"), f"{c['budget_ms']:.3f}"]
        if "rounds_used" not in c:
            reason = "below the fastest plan" if "infeasible" in c else f"no plan met it: {c['failed'][:90]}"
            rows.append(head + ["-"] * 8 + [reason])
            continue
        low, high = c["check_interval"]
        rows.append(head + [f"{c['open_loop_over_budget']:.3f}", f"{c['loop_over_budget']:.3f}",
                            f"{c['check_over_budget']:.3f} ({low / c['requested_ratio']:.3f}-"
                            f"{high / c['requested_ratio']:.3f})", f"{c['check_over_loop']:.3f}",
                            c["rounds_used"], f"{c['loop_s']:.0f}",
                            f"{100 * c['check_spread']:.1f}%", f"{100 * c['check_dense_spread']:.1f}%", c["status"]])
    goals = _goals(cases)
    text = markdown_table(["model", "backend", "budget / dense", "request", "budget ms",
                           "open loop: measured / budget", "loop: measured / budget",
                           "check: measured / budget (95% interval)", "check / loop ratio", "rounds", "loop s",
                           "check noise (plan)", "check noise (dense)", "status"], rows)
    if goals["plans"]:
        text += (
            f"\n\n{goals['plans']} feasible plans ({goals['infeasible']} budgets below the fastest plan, "
            f"{goals['failed']} with no measured plan meeting the budget). Independent check: measured <= 1.02x "
            f"budget in {100 * goals['within_102pct']:.0f}%, >= 0.95x in {100 * goals['at_least_95pct']:.0f}%, "
            f"within [0.95, 1.02] in {100 * goals['in_95_102pct']:.0f}% (goal >= 90%), at most "
            f"{goals['max_check_over_budget']:.3f}x (goal <= 1.05); within 3% of the loop's own ratio in "
            f"{100 * goals['within_3pct_of_loop']:.0f}%. The loop's own measurement: <= budget in "
            f"{100 * goals['loop_within_100pct']:.0f}%. Open loop (round 1): <= 1.02x in "
            f"{100 * goals['open_loop_within_102pct']:.0f}%, >= 0.95x in "
            f"{100 * goals['open_loop_at_least_95pct']:.0f}%."
            f"\nMedian rounds {goals['median_rounds']} (goal <= 2); median seconds the loop adds per plan "
            f"{goals['median_loop_s']:.0f} (timer start, warm-up, timing and refits); median check noise (round "
            f"spread of a plan) {100 * goals['median_check_spread']:.1f}%.")
    if noise:
        text += f"\n\nThis run: {noise.describe()}."
    return text


if __name__ == "__main__":
    main()
