"""What each smaller input size buys in latency and costs in output agreement, measured before anything is pruned.

For an ImageNet-size network the input size is the cheapest lever (EfficientNet-Lite0 at 1.5x: the dense network at
176 kept 81.1% top-1 where widths alone kept 75.5%; docs/planning.md), but which size to give ``latprune run
--input-size`` is the user's choice. The survey measures it: every candidate size's dense network is timed against
the dense network at its own size in the same rounds (paired ratios), and run on the same unlabeled calibration images
(each size with its own resize, the field of view kept): how often its top class agrees with the network at its own
size, and the KL divergence between their outputs. Labels are never read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from latprune.batching import forward_in_batches
from latprune.errors import LatpruneError
from latprune.groups import layer_macs
from latprune.input_size import check_input_size, load_at_size
from latprune.models import LoadedModel
from latprune.network import PairedRatio
from latprune.plan_scoring import disagreement
from latprune.planner.damage import output_loss

if TYPE_CHECKING:
    from latprune.profiler.api import PairedTiming

SMALLEST = 0.7  # candidate sizes go down to this fraction of the model's own shorter side
STEP = 8  # ... in steps of this many pixels


def candidate_sizes(native_shape: Sequence[int], smallest: float = SMALLEST, step: int = STEP) -> list[int]:
    """Sizes below the model's own shorter side, multiples of ``step``, down to ``smallest`` of it; largest first."""
    shorter = min(int(native_shape[-2]), int(native_shape[-1]))
    top = (shorter - 1) // step * step
    return [s for s in range(top, 0, -step) if s >= smallest * shorter]


def check_sizes(sizes: Sequence[int], native_shape: Sequence[int]) -> list[int]:
    """The sizes asked for, each checked like ``--input-size``, without repeats, largest first."""
    for size in sizes:
        check_input_size(size, native_shape)
    return sorted(set(sizes), reverse=True)


@dataclass(frozen=True)
class SizeReading:
    """One input size: its dense network's latency and MACs relative to the model at its own size, and how its
    outputs agree with that model's on the calibration images (None without images)."""

    size: int
    input_shape: tuple[int, ...]
    ratio: PairedRatio
    macs_fraction: float
    agreement: float | None = None  # share of images whose top class is the reference's
    kl: float | None = None  # mean KL(reference || this size) per image, in nats

    def to_json(self) -> dict:
        return {"size": self.size, "input_shape": list(self.input_shape), "ratio": self.ratio.to_json(),
                "speedup": 1 / self.ratio.ratio, "macs_fraction": self.macs_fraction, "agreement": self.agreement,
                "kl": self.kl}


def total_macs(loaded: LoadedModel) -> int:
    return sum(layer_macs(loaded.model, loaded.example_input()).values())


def output_agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(share of images whose top class agrees, mean KL(softmax(reference) || softmax(other)) per image): the
    planner's calibration readings (:func:`disagreement`, :func:`output_loss`)."""
    return 1 - disagreement(reference, other), output_loss(reference, other)


def survey_sizes(native: LoadedModel, sized: Sequence[tuple[int, LoadedModel]],
                 measure: Callable[[Sequence[LoadedModel]], list[PairedRatio]],
                 images: Callable[[LoadedModel], torch.Tensor] | None = None,
                 progress: Callable[[str], None] = lambda text: None) -> tuple[list[SizeReading], int]:
    """A reading per ``(size, network at that size)``, and the number of images compared on: ``measure(networks)``
    gives their paired ratios to ``native`` (one timing, all in the same rounds); ``images(network)``, the
    calibration images preprocessed for a network (the same photos for each), when agreement is wanted. The images
    are read first, so an unreadable folder fails before the timing."""
    reference, count = None, 0
    if images is not None:
        progress("running the calibration images through the network at its own size")
        calib = images(native)
        reference, count = forward_in_batches(native.model, calib), len(calib)
    progress(f"timing the dense network at {len(sized)} input sizes against itself at its own")
    ratios = measure([loaded for _, loaded in sized])
    native_macs = total_macs(native)
    readings = []
    for (size, loaded), ratio in zip(sized, ratios, strict=True):
        agreement = kl = None
        if reference is not None:
            progress(f"running the calibration images through the network at {size}")
            agreement, kl = output_agreement(reference, forward_in_batches(loaded.model, images(loaded)))
        readings.append(SizeReading(size, tuple(loaded.input_shape), ratio, total_macs(loaded) / native_macs,
                                    agreement, kl))
    return readings, count


@dataclass(frozen=True)
class Survey:
    """A survey's readings (largest size first), the networks it loaded at those sizes, the images compared on, the
    paired timing and the device it ran on."""

    readings: tuple[SizeReading, ...]
    networks: tuple[LoadedModel, ...]
    images: int
    timing: PairedTiming
    device: dict


def run_survey(native: LoadedModel, backend: str, sizes: Sequence[int] | None = None, calib: str | None = None,
               images: int = 256, weights: str | None = None, preprocessing: Mapping | None = None,
               max_seconds: float = 180.0, threads: int | None = None, global_warmup_s: float = 5.0,
               db: str | os.PathLike | None = None, progress: bool = True, label: str = "latprune sizes") -> Survey:
    """The readings of ``native``'s model at ``sizes`` (default :func:`candidate_sizes`) on ``backend``, with
    ``images`` photos of the folder ``calib`` when given; ``db``: the profile whose quiet time of the dense network
    leaves slow-state rounds out; ``label``: the progress lines' prefix."""
    from latprune import pipeline

    if calib is not None and not os.path.isdir(calib):
        raise LatpruneError(f"calibration folder not found: {calib}")
    sizes = check_sizes(sizes, native.input_shape) if sizes else candidate_sizes(native.input_shape)
    if not sizes:
        raise LatpruneError(f"no input size to try below {'x'.join(map(str, native.input_shape[-2:]))}: give --sizes")
    sized = [(size, load_at_size(native, weights, size, preprocessing)) for size in sizes]
    rule = pipeline.RoundsRule(min_rounds=10, max_rounds=60, max_seconds=max_seconds)
    timed = {}

    def measure(networks: Sequence[LoadedModel]) -> list[PairedRatio]:
        timed["timing"], timed["device"] = pipeline.measure_against_dense(
            native.model, [n.model for n in networks], native.input_shape, backend, rule=rule, threads=threads,
            global_warmup_s=global_warmup_s, warn=progress, input_shapes=[n.input_shape for n in networks],
            quiet_ms=pipeline.quiet_dense_ms(db, backend, native, threads))
        return timed["timing"].ratios

    def read(loaded: LoadedModel) -> torch.Tensor:
        return pipeline.calibration_images(calib, loaded, size=images)

    def say(text: str) -> None:
        if progress:
            print(f"{label}: {text}", file=sys.stderr, flush=True)

    readings, count = survey_sizes(native, sized, measure, read if calib else None, say)
    return Survey(tuple(readings), tuple(loaded for _, loaded in sized), count, timed["timing"], timed["device"])


def survey(native: LoadedModel, backend: str, sizes: Sequence[int] | None = None, calib: str | None = None,
           images: int = 256, weights: str | None = None, preprocessing: Mapping | None = None,
           max_seconds: float = 180.0, threads: int | None = None, global_warmup_s: float = 5.0,
           db: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """``latprune sizes``: :func:`run_survey`'s readings as a JSON-able record."""
    result = run_survey(native, backend, sizes, calib, images, weights, preprocessing, max_seconds, threads,
                        global_warmup_s, db, progress)
    timing = result.timing
    return {"model": native.spec, "backend": backend, "input_shape": list(native.input_shape),
            "preprocessing": native.preprocessing.describe(native.input_shape),
            "sizes": [r.to_json() for r in result.readings], "dense": timing.reference.to_json(),
            "converged": timing.converged, "seconds": timing.seconds, "slow_state_rounds": timing.slow_state_rounds,
            "calib": calib, "images": result.images, "device": result.device}
