"""Issue #8: accuracy vs measured latency (cifar resnet56), and latency-only curves (resnet50, mobilenet_v2).

Every method plans for the same ort-cpu budgets (fractions of the dense model's predicted
latency) with the same channel importance (l2) and gets the same recovery where it
applies, so the rows differ only in how widths are chosen:

- ``latprune``: the exact latency DP, + two-stage recovery (the product's default);
- ``uniform``: one keep ratio for all groups, bisected to the budget, + two-stage;
- ``flops-dp``: the same DP on MACs, its MACs budget bisected to the latency budget, + two-stage;
- ``tp-global``: Torch-Pruning global magnitude ranking, ratio bisected to the budget,
  + BN recalibration (its usual post-training repair) and + two-stage.

Accuracy: all 10,000 CIFAR-10 test images; recovery: 1,024 unlabeled train images. Every
pruned model of a model is measured interleaved with its dense model in one process.
Run: ``python -m benchmarks.pareto [--db PATH] [--quick]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import DEFAULT_DB, RESULTS, SHARED, markdown_table, measure_all, plan_all, write_result
from benchmarks.recovery import test_tensors, top1
from latprune.data import calibration_tensor
from latprune.analysis import analyse
from latprune.models import load_model
from latprune.planner.api import flops_plan, latency_plan, tp_global_plan, uniform_plan_for_budget
from latprune.recovery import recover

PLANNERS = {"latprune": latency_plan, "uniform": uniform_plan_for_budget, "flops-dp": flops_plan,
            "tp-global": tp_global_plan}
RECOVERIES = {"latprune": ["two-stage"], "uniform": ["two-stage"], "flops-dp": ["two-stage"],
              "tp-global": ["bn", "two-stage"]}
ACCURACY_FRACTIONS = [0.5, 0.7, 0.8, 0.9]
LATENCY_FRACTIONS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def accuracy_curve(backend: str, db: Path, quick: bool, rounds: int) -> list[dict]:
    loaded = load_model("cifar:resnet56", weights=str(SHARED / "models" / "cifar10" / "resnet56-4bfd9763.th"))
    images, labels = test_tensors(1000 if quick else None)
    calib = calibration_tensor(SHARED / "data" / "cifar10-jpeg" / "train", "cifar", loaded.input_shape,
                               size=256 if quick else 1024, seed=0)
    fractions = [0.5, 0.8] if quick else ACCURACY_FRACTIONS
    analysis = analyse(loaded)
    cases, pruned = plan_all(analysis, backend, db, fractions, PLANNERS)
    measure_all(loaded, backend, cases, [p.model for p in pruned], rounds)
    dense_top1 = top1(loaded.model, images, labels)
    rows, built = [], iter(pruned)
    for case in cases:
        if "infeasible" in case:
            rows.append(case)
            continue
        model = next(built)
        for recipe in RECOVERIES[case["method"]]:
            recovered, report = recover(analysis, model, recipe, calib)
            rows.append({**case, "recovery": recipe, "top1": top1(recovered.model, images, labels),
                         "dense_top1": dense_top1, "recovery_s": report.seconds})
    return rows


def latency_curves(backend: str, db: Path, quick: bool, rounds: int) -> list[dict]:
    rows = []
    for spec in (["torchvision:mobilenet_v2"] if quick else ["torchvision:resnet50", "torchvision:mobilenet_v2"]):
        loaded = load_model(spec)
        cases, pruned = plan_all(analyse(loaded), backend, db, [0.5, 0.8] if quick else LATENCY_FRACTIONS, PLANNERS)
        measure_all(loaded, backend, cases, [p.model for p in pruned], rounds)
        rows += cases
    return rows


def plot(accuracy_rows: list[dict], latency_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = sorted({r["model"] for r in latency_rows})
    fig, axes = plt.subplots(1, 1 + len(specs), figsize=(5.5 * (1 + len(specs)), 4.2))
    ax = axes[0]
    for method, recipes in RECOVERIES.items():
        for recipe in recipes:
            points = sorted((r["measured_ms"], 100 * r["top1"]) for r in accuracy_rows
                            if r.get("method") == method and r.get("recovery") == recipe)
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{method} + {recipe}")
    dense = [r for r in accuracy_rows if "dense_top1" in r]
    if dense:
        ax.scatter([dense[0]["dense_measured_ms"]], [100 * dense[0]["dense_top1"]], color="black", marker="*", s=90,
                   label="dense", zorder=4)
    ax.set(xlabel="measured latency, ort-cpu (ms)", ylabel="top-1 (%)", title="cifar:resnet56, CIFAR-10 test")
    ax.legend(fontsize=7)
    for ax, spec in zip(axes[1:], specs):
        for method in PLANNERS:
            points = sorted((r["measured_ms"], 100 * r["importance_kept"]) for r in latency_rows
                            if r["model"] == spec and r["method"] == method and "measured_ms" in r)
            if points:
                ax.plot(*zip(*points), marker="o", label=method)
        ax.set(xlabel="measured latency, ort-cpu (ms)", ylabel="l2 importance kept (%)", title=spec)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def goal_check(rows: list[dict], fraction: float = 0.5) -> str:
    at = [r for r in rows if r["fraction"] == fraction and "top1" in r]
    ours = [r["top1"] for r in at if r["method"] == "latprune"]
    if not ours:
        return (f"Goal at {fraction}x dense latency: not measurable, the budget is below the fastest latprune plan "
                f"({next((r['infeasible'] for r in rows if r['fraction'] == fraction), '')}).")
    best_baseline = max((r["top1"] for r in at if r["method"] != "latprune"), default=float("nan"))
    tp_bn = max((r["top1"] for r in at if r["method"] == "tp-global" and r["recovery"] == "bn"), default=float("nan"))
    return (f"Goal at {fraction}x: latprune {100 * ours[0]:.2f}% vs best baseline {100 * best_baseline:.2f}% "
            f"(goal +2) and TP global + BN {100 * tp_bn:.2f}% (goal +5).")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="profile database (profiled if missing)")
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="two budgets, 256 calibration / 1,000 test images")
    args = parser.parse_args(argv)
    accuracy_rows = accuracy_curve(args.backend, args.db, args.quick, args.rounds)
    latency_rows = latency_curves(args.backend, args.db, args.quick, args.rounds)
    name = "pareto" + ("_quick" if args.quick else "")
    plot(accuracy_rows, latency_rows, RESULTS / f"{name}.png")

    def cells(r: dict, extra: list) -> list:
        if "infeasible" in r:
            return [r["model"], f"{r['fraction']:.1f}", f"{r['budget_ms']:.3f}", r["method"], "-", "-", "-", "-",
                    *["-"] * len(extra), "below the fastest plan"]
        return [r["model"], f"{r['fraction']:.1f}", f"{r['budget_ms']:.3f}", r["method"], f"{r['predicted_ms']:.3f}",
                f"{r['measured_ms']:.3f}", f"{r['measured_over_budget']:.3f}", f"{r['macs_fraction']:.3f}", *extra,
                f"{100 * r['spread']:.1f}%"]

    head = ["model", "budget / dense", "budget ms", "method", "predicted ms", "measured ms", "measured / budget",
            "MACs / dense"]
    accuracy_table = markdown_table(head + ["recovery", "top-1 %", "noise"], [
        cells(r, [r.get("recovery", "-"), f"{100 * r['top1']:.2f}" if "top1" in r else "-"]) for r in accuracy_rows])
    latency_table = markdown_table(head + ["importance kept", "noise"], [
        cells(r, [f"{100 * r['importance_kept']:.1f}%" if "importance_kept" in r else "-"]) for r in latency_rows])
    dense = next((r for r in accuracy_rows if "dense_top1" in r), None)
    summary = (f"![pareto]({name}.png)\n\n## cifar:resnet56: accuracy vs measured latency\n\n"
               + (f"Dense: {100 * dense['dense_top1']:.2f}% top-1, {dense['dense_measured_ms']:.3f} ms measured.\n\n"
                  if dense else "") + accuracy_table + "\n\n" + goal_check(accuracy_rows)
               + "\n\n## Latency only (random weights)\n\n" + latency_table)
    write_result(name, {"accuracy": accuracy_rows, "latency": latency_rows, "backend": args.backend,
                        "quick": args.quick}, summary)


if __name__ == "__main__":
    main()
