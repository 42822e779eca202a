"""Issue #3: wall time to profile torchvision resnet50 (1x3x224x224) on ort-cpu, default settings.

Goal: <= 10 minutes on the 2-core CI machine. Also records the measured noise (median
relative round spread and p10-p90 spread of the variants' whole-network timings) and
the drift of the reference network. Run: ``python -m benchmarks.profiler_speed [--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import markdown_table, write_result
from latprune.models import load_model
from latprune.profiler.api import ProfileSettings, ProfileStore, profile_model

GOAL_S = 600


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="resnet18 with 16 variants instead")
    args = parser.parse_args(argv)
    spec, settings = ("torchvision:resnet50", ProfileSettings())
    if args.quick:
        spec, settings = ("torchvision:resnet18", ProfileSettings(variants=16))
    loaded = load_model(spec)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "profile.sqlite"
        report = profile_model(loaded, "ort-cpu", db=db, settings=settings)
        with ProfileStore(db) as store:
            device_id = store.find_device(report.device)
            layers = store.layer_timings(device_id, "ort-cpu")
            pairs_per_layer = {}
            for t in layers:
                family = (t.signature.kernel, t.signature.stride, t.signature.height, t.signature.epilogue)
                pairs_per_layer.setdefault(family, set()).add((t.signature.cin, t.signature.cout))
    data = report.to_json()
    data.update(goal_s=GOAL_S, meets_goal=report.wall_s <= GOAL_S,
                median_width_pairs_per_layer_family=sorted(len(v) for v in pairs_per_layer.values())[
                    len(pairs_per_layer) // 2])
    rows = [[spec, "ort-cpu", f"{report.wall_s:.0f} s", f"{GOAL_S} s", "yes" if data["meets_goal"] else "NO",
             report.variants_timed, report.layer_rows,
             report.alignment_step if report.alignment_detected else f"inconclusive (grid {report.alignment_step})",
             f"{100 * report.noise_round_spread:.1f}%", f"{100 * report.noise_p10_p90:.1f}%",
             f"{100 * report.drift:.1f}%"]]
    summary = markdown_table(["model", "backend", "wall time", "goal", "met", "variants", "layer rows",
                              "alignment step", "round spread (median)", "p10-p90 (median)", "drift"], rows)
    write_result("profiler_speed" + ("_quick" if args.quick else ""), data, summary)


if __name__ == "__main__":
    main()
