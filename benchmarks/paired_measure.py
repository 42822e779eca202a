"""Issue #26: does `latprune measure --pruned` repeat, and agree with the closed loop?

cifar resnet56 on ort-cpu: ``latprune plan --speedup 2`` (closed loop on), ``latprune prune``, then
``latprune measure --pruned`` twice, each in its own process, exactly as a user runs them. Each
measurement times the pruned file interleaved with the dense model until their paired ratio is
known to +-1.5% (95% interval) or two minutes.
Goals: the two speedups within 3% of each other, and each within 3% of the ratio the loop recorded.
Run: ``python -m benchmarks.paired_measure [--db PATH] [--speedup 2] [--quick] [--noise spells]``. Run it alone
(``--noise spells`` makes the host noisy on purpose: see ``benchmarks/host_noise.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import DEFAULT_DB, markdown_table, write_result
from benchmarks.host_noise import add_noise_option, noise_spec, noisy_host

MODEL = "cifar:resnet56"
BACKEND = "ort-cpu"


def latprune(*argv: str) -> dict:
    """One latprune command in its own process, its JSON result."""
    proc = subprocess.run([sys.executable, "-m", "latprune.cli", *argv, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"latprune {' '.join(argv)} failed: {proc.stderr.strip()[-500:]}")
    if proc.stderr.strip():
        print(proc.stderr.strip().splitlines()[-1], file=sys.stderr)
    return json.loads(proc.stdout)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="profile database (profiled if missing)")
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="each measurement capped at 30 s instead of 120 s")
    parser.add_argument("--name", default="paired_measure", help="result file name")
    add_noise_option(parser)
    args = parser.parse_args(argv)
    noise = noise_spec(args.noise)
    cap = ["--max-seconds", "30"] if args.quick else []
    args.db.parent.mkdir(parents=True, exist_ok=True)
    common = ["--model", MODEL]
    with tempfile.TemporaryDirectory(prefix="latprune-paired-") as work, noisy_host(noise):
        latprune("profile", *common, "--backend", BACKEND, "--db", str(args.db))
        plan = latprune("plan", *common, "--backend", BACKEND, "--db", str(args.db), "--speedup", str(args.speedup),
                        "--out", f"{work}/plan.json")
        latprune("prune", *common, "--plan", f"{work}/plan.json", "--out", f"{work}/pruned.pt")
        runs = [latprune("measure", "--pruned", f"{work}/pruned.pt", "--backend", BACKEND, *cap) for _ in range(2)]
    loop = plan["verification"]
    chosen = loop["rounds"][loop["chosen_round"] - 1]
    loop_ratio = chosen["relative_to_dense"]
    ratios = [r["ratio"]["ratio"] for r in runs]
    between = max(ratios) / min(ratios) - 1
    vs_loop = [r / loop_ratio - 1 for r in ratios]
    data = {"model": MODEL, "backend": BACKEND, "speedup_requested": args.speedup, "loop": chosen,
            "loop_ratio": loop_ratio, "measurements": runs, "ratios": ratios, "between_runs": between,
            "vs_loop": vs_loop, "goal_between_runs_met": between <= 0.03,
            "goal_vs_loop_met": all(abs(v) <= 0.03 for v in vs_loop), "host_noise": noise and noise.to_json()}
    rows = [["closed loop (plan)", f"{loop_ratio:.4f}", f"{chosen['ratio_low']:.4f}-{chosen['ratio_high']:.4f}",
             chosen["timing_rounds"], f"{1 / loop_ratio:.3f}x", "-", "-"]]
    for i, r in enumerate(runs):
        ratio = r["ratio"]
        rows.append([f"measure --pruned, run {i + 1}", f"{ratio['ratio']:.4f}", f"{ratio['low']:.4f}-{ratio['high']:.4f}",
                     ratio["rounds"], f"{r['speedup']:.3f}x",
                     f"{r['dense']['median_ms']:.3f} ms (p10 {r['dense']['p10_ms']:.3f}, p90 {r['dense']['p90_ms']:.3f})",
                     f"{100 * r['dense']['spread']:.0f}%"])
    table = markdown_table(["measurement", "ratio to dense", "95% interval", "rounds", "speedup", "dense",
                            "dense round spread"], rows)
    write_result(args.name + ("_quick" if args.quick else ""), data, table + (
        f"\n\nTwo `measure --pruned` runs differ by {100 * between:.2f}% (goal <= 3%: "
        f"{'met' if data['goal_between_runs_met'] else 'NOT met'}); against the loop's ratio: "
        + ", ".join(f"{100 * v:+.2f}%" for v in vs_loop)
        + f" (goal within 3%: {'met' if data['goal_vs_loop_met'] else 'NOT met'})."
        + (f"\n\nThis run: {noise.describe()}." if noise else "")))


if __name__ == "__main__":
    main()
