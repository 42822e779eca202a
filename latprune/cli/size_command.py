"""``latprune sizes``: what smaller input sizes buy in latency and cost in output agreement, before pruning."""

from __future__ import annotations

import argparse

from latprune.cli.options import (backend_options, comma_list, db_option, finite_float, json_option, model_options,
                                  positive_int)
from latprune.cli.registry import command
from latprune.cli.requests import dense_model, preprocessing
from latprune.cli.text import table

DEFAULT_IMAGES = 256


def _size_list(text: str) -> list[int]:
    """An argparse type: ``208,192,176``."""
    return [positive_int(part) for part in comma_list(text)]


def _format_sizes(result: dict) -> str:
    native = "x".join(map(str, result["input_shape"][-2:]))
    rows = [(r["size"], "x".join(map(str, r["input_shape"][-2:])),
             f"{r['ratio']['ratio']:.3f} ({r['ratio']['low']:.3f}-{r['ratio']['high']:.3f})", f"{r['speedup']:.2f}x",
             f"{r['macs_fraction']:.3f}", "-" if r["agreement"] is None else f"{100 * r['agreement']:.1f}%",
             "-" if r["kl"] is None else f"{r['kl']:.3f}")
            for r in result["sizes"]]
    dense = result["dense"]
    lines = [
        f"{result['model']} on {result['backend']}, the dense network at smaller input sizes against itself at "
        f"{native} (paired, same rounds; {dense['median_ms']:.3f} ms there, round spread {100 * dense['spread']:.1f}%)",
        table(["size", "input", "latency / dense (95%)", "speedup", "MACs / dense",
               f"top class as at {native}", "KL"], rows),
    ]
    if result["images"]:
        lines.append(f"agreement and KL(at {native} || at the size) on {result['images']} unlabeled images of "
                     f"{result['calib']}, each size with its resize scaled like the crop (field of view kept)")
    if not result["converged"]:
        lines.append("warning: the timing stopped at --max-seconds before every ratio was known to +-1.5%")
    lines.append("plan widths at a size against the dense network at its own: latprune run --input-size N ... (or "
                 "--input-size auto: the largest size whose latency alone meets the budget or comes within 5%)")
    return "\n".join(lines)


def _sizes_options(parser: argparse.ArgumentParser) -> None:
    model_options(parser)
    backend_options(parser, default="ort-cpu")
    parser.add_argument("--sizes", type=_size_list, metavar="N,N,...",
                        help="shorter sides to try (default: every multiple of 8 below the model's own, down to 0.7 "
                             "of it)")
    parser.add_argument("--calib", metavar="DIR", help="unlabeled images (any folder layout): how often each size's "
                                                       "top class agrees with the model at its own size")
    parser.add_argument("--images", type=positive_int, default=DEFAULT_IMAGES, metavar="N",
                        help=f"calibration images to compare on (default {DEFAULT_IMAGES})")
    parser.add_argument("--max-seconds", type=finite_float, default=180.0, metavar="S",
                        help="stop timing after this long even if a ratio is not yet known to +-1.5%% (default 180)")
    db_option(parser)  # the dense model's profiled quiet time, to leave out slow-state rounds
    json_option(parser)


@command("sizes", "latency and agreement of the dense network at smaller input sizes", _sizes_options,
         _format_sizes)
def cmd_sizes(args: argparse.Namespace) -> dict:
    """The dense network at smaller input sizes (each built for its size, images resized so that the crop keeps
    the field of view): each size's latency as its paired ratio to the network at its own size (timed in the same
    rounds), its MACs, and with --calib how often its top class agrees with the network at its own size on
    unlabeled images, and the KL divergence between their outputs. What `latprune run --input-size` can start
    from."""
    from latprune.size_survey import survey

    return survey(dense_model(args), args.backend, args.sizes, args.calib, args.images, args.weights,
                  preprocessing(args), args.max_seconds, args.threads, args.global_warmup, args.db)
