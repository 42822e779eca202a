"""Time chosen pruned variants of one model next to its dense network, and keep them as profile rows.

The closed planning loop asks "how fast is *this* plan, here?". :class:`VariantTimer` answers
with the profiler's own method (one process, a global warm-up, shuffled interleaved rounds,
per-layer segments with the instrumentation overhead removed) and records each variant's
layers and whole-network time in the profile database, so the next fit of the performance
model knows the widths plans actually use. The dense network is timed in the same rounds:
a speedup is judged against it.

Rounds go on until the variant's paired ratio to the dense network is known to +-1.5% (95%
interval, :class:`~latprune.profiler.timer.RoundsRule`) or a cap. A round in which the dense network ran far slower than it does on a quiet host (another process
on the CPU: two verifying plans on one machine measured a 2 ms network at 600 ms) is left out,
of the result and of the profile, and timed again; when too few rounds are clean the timing is
refused, and nothing is stored. A slow minute must never become a slow layer for every later plan.
Rounds that ran in the host's slow state (:mod:`latprune.network.quiet_reference`) are left out too and waited
out for up to a minute: that state moves a plan's ratio to dense (0.52 -> 0.65 for a Lite0 plan).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from latprune.analysis import ModelAnalysis
from latprune.errors import LatpruneError
from latprune.models import LoadedModel
from latprune.network import Measurement, PairedRatio, layer_signatures, model_key, paired_interval, trace_layers
from latprune.network.measurement import paired_quiet_rounds
from latprune.network.quiet_reference import in_quiet_state, quiet_reference_ms, quiet_state_ms, slowdown_factor
from latprune.profiler.backends import RoundSample, get_backend
from latprune.profiler.device import fingerprint
from latprune.profiler.runner import ProfileSettings, _finish, _Job, _round_runs, refuse_another_network
from latprune.profiler.store import ProfileStore
from latprune.profiler.timer import RoundsRule, Timer
from latprune.profiler.variants import Variant
from latprune.surgery import prune_channels


@dataclass(frozen=True)
class VariantTiming:
    """One variant timed against the dense network in the same rounds."""

    variant_key: str
    variant: Measurement
    dense: Measurement
    new_layer_rows: int
    seconds: float
    rejected_rounds: int = 0  # rounds left out because the host was contended or in its slow state while they ran


# A round whose dense time exceeds this many times the dense network's quiet time (over this timer's rounds and the
# profile's own checks of the dense network) was run on a contended host. This host's own swings reach 2x.
CONTENDED_FACTOR = 2.5
MIN_CLEAN_ROUNDS = 2


class VariantTimer:
    """Times variants (per-group widths) of ``analysis``'s model on ``backend_name``; a context manager.

    Shuffled rounds per call, each visiting the dense network and the variant once, as many as ``rule`` asks.
    ``reference``: the dense network to time against where it is not ``analysis``'s (a plan made at a smaller input
    size is judged against the model at its own; each network is fed its own input shape).
    """

    def __init__(self, analysis: ModelAnalysis, backend_name: str, db: str | Path | None = None,
                 threads: int | None = None, rule: RoundsRule = RoundsRule(min_rounds=7, max_rounds=30,
                                                                           max_seconds=45.0),
                 settings: ProfileSettings = ProfileSettings(), reference: LoadedModel | None = None):
        self.analysis, self.rule = analysis, rule
        self.backend = get_backend(backend_name, threads)
        description = self.backend.description()
        self.device = fingerprint(description)
        self._store = ProfileStore(db)
        self._work = tempfile.TemporaryDirectory(prefix="latprune-verify-")
        try:
            self._device_id = self._store.device_id(self.device, description)
            dense_variant = Variant.of({g.id: g.width for g in analysis.groups}).key
            refuse_another_network(self._store, self._device_id, self.backend.name, analysis.loaded,
                                   analysis.layers, dense_variant)
            if reference is not None:
                refuse_another_network(self._store, self._device_id, self.backend.name, reference,
                                       trace_layers(reference.model, reference.example_input()), dense_variant)
            self._timer = Timer(self.backend, warmup=settings.warmup, seed=settings.seed)
            dense = reference or analysis.loaded  # (the same layers, at its own input shape)
            self._dense = self.backend.prepare(dense.model, dense.input_shape, list(analysis.layers),
                                               Path(self._work.name) / "dense.bin")
            self._timer.warm_up([self._dense], settings.global_warmup_s)
            dense_ms = Measurement.from_samples([self._timer.sample(self._dense, settings.runs).plain_ms]).median_ms
            self.dense_ms = dense_ms  # a first look at the dense network after the warm-up (one sample)
            self._runs = _round_runs(settings, dense_ms)
            profiled = self._store.drift_checks(self._device_id, self.backend.name, model_key(dense))
            self._checks = [*profiled, dense_ms]
            self._state_ms = quiet_state_ms(profiled)  # None: the profile saw one state, nothing to wait out
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "VariantTimer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()
        self._store.close()
        self._work.cleanup()

    @property
    def db(self) -> str:
        return self._store.location

    @property
    def _quiet_ms(self) -> float:
        """The dense network's quiet time over the profile's checks and this timer's rounds."""
        return quiet_reference_ms(self._checks)

    def time(self, widths: Mapping[str, int]) -> VariantTiming:
        """Time the variant with these widths (leading channels: timing does not depend on which) and
        record it in the profile; its whole-network time and the dense network's, same rounds."""
        began = time.perf_counter()
        analysis, loaded = self.analysis, self.analysis.loaded
        variant = Variant.of({g.id: int(widths[g.id]) for g in analysis.groups})
        model = prune_channels(loaded.model, loaded.example_input(), analysis.groups, variant.kept(analysis.groups),
                               branches=analysis.branches)
        layers = analysis.layers_of(model)
        signatures = layer_signatures(model, layers, loaded.input_shape[0], self.backend.name)
        prepared = self.backend.prepare(model, loaded.input_shape, list(layers),
                                        Path(self._work.name) / f"{variant.key}.bin")
        runs, profiled_runs = self._runs
        rounds: list[tuple[list[float], dict]] = []  # (dense samples, variant round) per round
        rule, timing_began = self.rule, time.perf_counter()
        while True:
            taken = {}
            for which in self._timer.shuffled(["dense", "variant"]):
                if which == "dense":
                    taken[which] = self._timer.sample(self._dense, runs).plain_ms
                else:
                    taken[which] = self._timer.sample(prepared, runs, profiled_runs).to_json()
            self._checks.append(statistics.median(taken["dense"]))
            rounds.append((taken["dense"], taken["variant"]))
            settled = self._settled(self._clean(rounds))
            if len(settled) >= rule.min_rounds:
                ratio = _ratio(settled)
                if ratio.covered and ratio.half_width <= rule.target:
                    break
            seconds = time.perf_counter() - timing_began
            if (len(settled) >= rule.max_rounds or rule.waited_out(len(rounds), seconds)
                    or (len(settled) >= rule.min_rounds and seconds >= rule.max_seconds)):
                break
        clean = self._clean(rounds)
        settled = self._settled(clean)
        if len(clean) < MIN_CLEAN_ROUNDS:
            slowest = max(statistics.median(d) for d, _ in rounds)
            raise LatpruneError(
                f"the host is contended: the dense network took up to {slowest:.4g} ms in {len(rounds) - len(clean)} "
                f"of {len(rounds)} rounds against {self._quiet_ms:.4g} ms quiet (another process is using the CPU?); "
                f"nothing was stored in the profile: run again on a quiet machine")
        if len(settled) < MIN_CLEAN_ROUNDS:
            print(f"latprune: warning: the host stayed in its slow state while timing a plan (dense "
                  f"{statistics.median(statistics.median(d) for d, _ in clean):.4g} ms against {self._quiet_ms:.4g} ms "
                  f"quiet): this plan's ratio to dense is that state's, not the quiet one's", file=sys.stderr)
            settled = clean
        # Stored from the rounds the paired ratio stands on (the quiet ones), each divided by how much slower than
        # its quiet time the host ran, like the profiler's rows: load slows the dense network and its variants
        # unlike each other, so a loaded round's layer times are not a quiet host's.
        whole, dense = _measurements(settled)
        quiet = paired_quiet_rounds(whole, dense)
        job = _Job(variant, prepared, signatures, {
            i: RoundSample.from_json(v).scaled(slowdown_factor(statistics.median(d), self._quiet_ms)).to_json()
            for i, (d, v) in enumerate(settled) if i in quiet})
        new_rows = _finish(job, self._store, self._device_id, self.backend.name, analysis.key)
        return VariantTiming(variant.key, whole, dense, new_rows,
                             time.perf_counter() - began, rejected_rounds=len(rounds) - len(settled))

    def _clean(self, rounds: list[tuple[list[float], dict]]) -> list[tuple[list[float], dict]]:
        """The rounds whose dense time says the host was not contended (judged against the quiet time)."""
        limit = CONTENDED_FACTOR * self._quiet_ms
        return [r for r in rounds if statistics.median(r[0]) <= limit]

    def _settled(self, rounds: list[tuple[list[float], dict]]) -> list[tuple[list[float], dict]]:
        """Of uncontended ``rounds``, those run in the host's quiet state
        (:func:`~latprune.network.quiet_reference.in_quiet_state`)."""
        return [r for r in rounds if in_quiet_state(statistics.median(r[0]), self._state_ms)]


def _measurements(rounds: list[tuple[list[float], dict]]) -> tuple[Measurement, Measurement]:
    """The variant's and the dense network's whole-network times over these (dense samples, variant round) rounds."""
    return (Measurement.from_samples([v["plain_ms"] for _, v in rounds]),
            Measurement.from_samples([d for d, _ in rounds]))


def _ratio(rounds: list[tuple[list[float], dict]]) -> PairedRatio:
    """The variant's paired ratio to the dense network over these (dense samples, variant round) rounds."""
    return paired_interval(*_measurements(rounds))
