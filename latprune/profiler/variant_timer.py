"""Time chosen pruned variants of one model next to its dense network, and keep them as profile rows.

The closed planning loop asks "how fast is *this* plan, here?". :class:`VariantTimer` answers
with the profiler's own method (one process, a global warm-up, shuffled interleaved rounds,
per-layer segments with the instrumentation overhead removed) and records each variant's
layers and whole-network time in the profile database, so the next fit of the performance
model knows the widths plans actually use. The dense network is timed in the same rounds:
a speedup is judged against it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from latprune.analysis import ModelAnalysis
from latprune.network import Measurement, layer_signatures
from latprune.profiler.backends import get_backend
from latprune.profiler.device import fingerprint
from latprune.profiler.runner import ProfileSettings, _finish, _Job, _round_runs
from latprune.profiler.store import ProfileStore
from latprune.profiler.timer import Timer
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


class VariantTimer:
    """Times variants (per-group widths) of ``analysis``'s model on ``backend_name``; a context manager.

    ``rounds`` shuffled rounds per call, each visiting the dense network and the variant once.
    """

    def __init__(self, analysis: ModelAnalysis, backend_name: str, db: str | Path | None = None,
                 threads: int | None = None, rounds: int = 7, settings: ProfileSettings = ProfileSettings()):
        self.analysis, self.rounds = analysis, rounds
        self.backend = get_backend(backend_name, threads)
        description = self.backend.description()
        self.device = fingerprint(description)
        self._store = ProfileStore(db)
        self._work = tempfile.TemporaryDirectory(prefix="latprune-verify-")
        try:
            self._device_id = self._store.device_id(self.device, description)
            self._timer = Timer(self.backend, warmup=settings.warmup, seed=settings.seed)
            loaded = analysis.loaded
            self._dense = self.backend.prepare(loaded.model, loaded.input_shape, list(analysis.layers),
                                               Path(self._work.name) / "dense.bin")
            self._timer.warm_up([self._dense], settings.global_warmup_s)
            dense_ms = Measurement.from_samples([self._timer.sample(self._dense, settings.runs).plain_ms]).median_ms
            self._runs = _round_runs(settings, dense_ms)
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
        return str(self._store.path)

    def time(self, widths: Mapping[str, int]) -> VariantTiming:
        """Time the variant with these widths (leading channels: timing does not depend on which) and
        record it in the profile; its whole-network time and the dense network's, same rounds."""
        began = time.perf_counter()
        analysis, loaded = self.analysis, self.analysis.loaded
        variant = Variant.of({g.id: int(widths[g.id]) for g in analysis.groups})
        model = prune_channels(loaded.model, loaded.example_input(), analysis.groups, variant.kept(analysis.groups))
        signatures = layer_signatures(model, analysis.layers, loaded.input_shape[0], self.backend.name)
        prepared = self.backend.prepare(model, loaded.input_shape, list(analysis.layers),
                                        Path(self._work.name) / f"{variant.key}.bin")
        job = _Job(variant, prepared, signatures, {})
        runs, profiled_runs = self._runs
        dense_samples = []
        for index in range(self.rounds):
            for which in self._timer.shuffled(["dense", "variant"]):
                if which == "dense":
                    dense_samples.append(self._timer.sample(self._dense, runs).plain_ms)
                else:
                    job.rounds[index] = self._timer.sample(prepared, runs, profiled_runs).to_json()
        new_rows = _finish(job, self._store, self._device_id, self.backend.name, analysis.key)
        whole = Measurement.from_samples([job.rounds[i]["plain_ms"] for i in sorted(job.rounds)])
        return VariantTiming(variant.key, whole, Measurement.from_samples(dense_samples), new_rows,
                             time.perf_counter() - began)
