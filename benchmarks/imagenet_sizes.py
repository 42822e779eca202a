"""Issue #29: does `latprune sizes` tell a user which input size to give `latprune run --input-size`?

``latprune sizes`` on EfficientNet-Lite0 (every multiple of 8 from 216 down to 160, each network built for its size)
measures each size's dense network against the one at 224 (paired ratios, same rounds) and how often its top class
agrees with the one at 224 on the 1,000 unlabeled calibration photos. This benchmark runs that command as a user types
it (alone: it times), then scores each size's network on the 1,000 labeled sample photos (accuracy only) and reports
how well the label-free agreement ranks the sizes by their top-1 (Spearman's rank correlation). Run: ``python -m
benchmarks.imagenet_sizes [--survey SURVEY.json]`` (a survey already made with ``latprune sizes --json`` on this
machine is read instead of timing again).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

from benchmarks.common import environment, markdown_table, write_result
from benchmarks.imagenet import CALIB, SAMPLE, SPEC
from benchmarks.imagenet_padding import top1_at
from latprune import pipeline


def survey(images: int) -> dict:
    """``latprune sizes`` through the command line; its JSON result."""
    command = [sys.executable, "-m", "latprune.cli", "sizes", "--model", SPEC, "--calib", str(CALIB), "--images",
               str(images), "--json"]
    print(" ".join(command), flush=True)
    return json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey", type=Path, help="a `latprune sizes --json` result made on this machine")
    parser.add_argument("--images", type=int, default=1000, help="calibration photos the survey compares on")
    parser.add_argument("--name", default="imagenet_sizes")
    args = parser.parse_args()
    env = environment()
    began = time.perf_counter()
    result = json.loads(args.survey.read_text()) if args.survey else survey(args.images)
    survey_s = time.perf_counter() - began
    if args.survey and result["device"].get("cpu_id") != env["cpu_id"]:
        raise SystemExit(f"{args.survey} was made on another machine ({result['device'].get('cpu_id')})")
    native = pipeline.load(SPEC)
    dense_top1, _ = pipeline.evaluate(native.model, str(SAMPLE), native.preprocessing, native.input_shape,
                                      progress=False)
    rows = []
    for reading in result["sizes"]:
        top1, _ = top1_at(native, reading["size"], built_for_size=True)
        rows.append({**reading, "top1": top1})
        print(f"{reading['size']}: top-1 {100 * top1:.1f}%", flush=True)
    rank = spearmanr([r["agreement"] for r in rows], [r["top1"] for r in rows])
    kl_rank = spearmanr([-r["kl"] for r in rows], [r["top1"] for r in rows])
    table = markdown_table(
        ["input size", "latency / dense at 224 (95%)", "speedup", "MACs / dense", "top class as at 224 (calib)",
         "KL", "top-1 % (sample)", "points from dense"],
        [[r["size"], f"{r['ratio']['ratio']:.3f} ({r['ratio']['low']:.3f}-{r['ratio']['high']:.3f})",
          f"{r['speedup']:.2f}x", f"{r['macs_fraction']:.3f}", f"{100 * r['agreement']:.1f}%", f"{r['kl']:.3f}",
          f"{100 * r['top1']:.1f}", f"{100 * (r['top1'] - dense_top1):+.1f}"] for r in rows])
    dense = result["dense"]
    summary = (
        f"EfficientNet-Lite0 (`{SPEC}`) on {result['backend']}, batch 1; host: {env['cpu']} ({env['cpu_id']}, "
        f"{env['cores']} cores). "
        f"`latprune sizes` ({'read from ' + args.survey.name if args.survey else f'{survey_s / 60:.1f} min'}): "
        f"each size's dense network, built for its size, timed against the one at 224 in the same rounds (dense at "
        f"224: {dense['median_ms']:.2f} ms, round spread {100 * dense['spread']:.1f}%; "
        f"{'every ratio to +-1.5%' if result['converged'] else 'the time cap came before every ratio was +-1.5%'}"
        f"), agreement and KL against the one at 224 on {result['images']} unlabeled calibration photos. Top-1 on "
        f"the 1,000 sample photos (+-1.5 points of sampling error); dense at 224: {100 * dense_top1:.1f}%.\n\n"
        f"{table}\n\nRank correlation with top-1 across the sizes (Spearman): agreement {rank.statistic:.2f}, "
        f"-KL {kl_rank.statistic:.2f}.")
    write_result(args.name, {"spec": SPEC, "environment": env, "survey": result, "dense_top1": dense_top1,
                             "rows": rows, "spearman_agreement": rank.statistic, "spearman_kl": kl_rank.statistic},
                 summary)


if __name__ == "__main__":
    main()
