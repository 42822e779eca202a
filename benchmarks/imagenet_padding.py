"""Issue #29: what EfficientNet-Lite0 loses at another input size when its "same" padding stays computed for 224.

The package pads "same" with padding computed once, at construction, for an input size (as TensorFlow ports do);
latprune builds a factory that takes ``input_shape`` for the shape asked (``latprune.models.efficientnet_lite``).
For each of ``--sizes``: the dense network built for 224 and the one built for the size, both given the same photos
(resized like the crop, as ``latprune run --input-size`` does: 256/224 of the size, centre crop), top-1 on the 1,000
``imagenet-sample`` photos. Accuracy only: nothing is timed. Run: ``python -m benchmarks.imagenet_padding
[--sizes 208,200,192,184,176]``.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import markdown_table, write_result
from benchmarks.imagenet import SAMPLE, SPEC
from latprune import pipeline
from latprune.input_size import load_at_size
from latprune.models import LoadedModel
from latprune.models.efficientnet_lite import lite0


def top1_at(native: LoadedModel, size: int, built_for_size: bool) -> tuple[float, float]:
    """(top-1, seconds) of the dense network given photos at ``size``, its padding computed for that size or for
    224 (``native``: the network at 224)."""
    at_size = load_at_size(native, None, size)
    network = at_size.model if built_for_size else lite0()
    began = time.perf_counter()
    top1, _ = pipeline.evaluate(network, str(SAMPLE), at_size.preprocessing, at_size.input_shape, progress=False)
    return top1, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="208,200,192,184,176", help="input sizes, comma-separated")
    parser.add_argument("--name", default="imagenet_padding")
    args = parser.parse_args()
    native, rows = pipeline.load(SPEC), []
    for size in (int(s) for s in args.sizes.split(",")):
        for_224, seconds_224 = top1_at(native, size, built_for_size=False)
        for_size, seconds_size = top1_at(native, size, built_for_size=True)
        rows.append({"size": size, "top1_padding_for_224": for_224, "top1_padding_for_size": for_size,
                     "seconds": seconds_224 + seconds_size})
        print(rows[-1], flush=True)
    table = markdown_table(
        ["input size", "padding computed for 224: top-1 %", "for the size: top-1 %", "points"],
        [[r["size"], f"{100 * r['top1_padding_for_224']:.1f}", f"{100 * r['top1_padding_for_size']:.1f}",
          f"{100 * (r['top1_padding_for_size'] - r['top1_padding_for_224']):+.1f}"] for r in rows])
    write_result(args.name, {"spec": SPEC, "images": str(SAMPLE), "rows": rows},
                 f"EfficientNet-Lite0 (`{SPEC}`), dense, photos resized to 256/224 of the size and centre-cropped; "
                 f"top-1 on the 1,000 sample photos (+-1.5 points of sampling error each; the two columns score the "
                 f"same photos, so their difference is far more certain). Accuracy only: nothing timed.\n\n{table}")


if __name__ == "__main__":
    main()
