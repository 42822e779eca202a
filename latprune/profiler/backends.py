"""Timing backends, registered under the names the CLI accepts.

A backend turns a (pruned) network into something it can run, then times it whole
(plain runs) and per layer (profiled runs). A layer's *segment* is its own kernel plus
every op that runs after it until the next conv/linear layer starts (fused BN and
activations, residual adds, pooling...), so segments plus a small prologue add up to
the whole network.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from latprune.errors import LatpruneError
from latprune.models.memory import available_bytes
from latprune.profiler.device import cpu_identity, cpu_model, physical_cores
from latprune.network import SIGNATURE_VERSION, TIMED_TYPES
from latprune.network.quiet_reference import QUIET_QUANTILE
from latprune.profiler.node_attribution import NodeAttribution
from latprune.profiler.visit_warmup import VISIT_WARMUP_MS, warm_up_visit


@dataclass
class RoundSample:
    """One round of timing one network."""

    plain_ms: list[float]
    profiled_ms: list[float]
    segments: list[dict[str, float]]  # per profiled run: layer name -> segment ms
    nodes_per_layer: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "RoundSample":
        return cls(**data)

    def scaled(self, factor: float) -> "RoundSample":
        """Every time divided by ``factor`` (how much slower than its reference the host ran this round)."""
        return RoundSample([t / factor for t in self.plain_ms], [t / factor for t in self.profiled_ms],
                           [{k: v / factor for k, v in run.items()} for run in self.segments],
                           dict(self.nodes_per_layer))


@dataclass(frozen=True)
class Prepared:
    """A network ready to be timed: a file the backend can load (ONNX Runtime) or the module itself held in
    memory (PyTorch), and its layer order."""

    path: Path
    layers: tuple[str, ...]
    module: nn.Module | None = field(default=None, compare=False, repr=False)
    input_shape: tuple[int, ...] = ()  # what ``module`` takes (the ONNX file states its own)


class Backend:
    name: str = ""

    def __init__(self, threads: int | None = None):
        self.threads = threads or physical_cores()

    def check_available(self) -> None:
        """Raise :class:`LatpruneError` if this backend cannot run here."""

    def description(self) -> dict:
        """Facts that decide whether timings are comparable (part of the device fingerprint)."""
        return {"backend": self.name, "cpu": cpu_model(), **cpu_identity(), "cores": physical_cores(),
                "threads": self.threads, "torch": torch.__version__.split("+")[0], "visit_warmup_ms": VISIT_WARMUP_MS,
                "signature_version": SIGNATURE_VERSION, "quiet_quantile": QUIET_QUANTILE}

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], layers: Sequence[str], path: Path) -> Prepared:
        raise NotImplementedError

    def time(self, prepared: Prepared, warmup: int, runs: int, profiled_runs: int,
             warmup_ms: float = 0.0) -> RoundSample:
        """One visit: at least ``warmup`` runs and ``warmup_ms`` of running, then ``profiled_runs`` per-layer runs
        and ``runs`` plain whole-network runs."""
        raise NotImplementedError

    def close(self) -> None:
        """Release processes or devices held by the backend."""


BACKENDS: dict[str, Callable[[int | None], Backend]] = {}


def register(name: str):
    def wrap(cls):
        BACKENDS[name] = lambda threads=None: cls(threads)
        cls.name = name
        return cls

    return wrap


def get_backend(name: str, threads: int | None = None) -> Backend:
    """The backend registered as ``name``, checked to be usable on this machine."""
    backend = _construct(name, threads)
    backend.check_available()
    return backend


def describe_device(name: str, threads: int | None = None) -> dict:
    """The description (and so the fingerprint) of this machine for backend ``name``, without starting it."""
    return _construct(name, threads).description()


def _construct(name: str, threads: int | None) -> Backend:
    if name not in BACKENDS:
        raise LatpruneError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name](threads)


# ---------------------------------------------------------------- PyTorch


class _TorchBackend(Backend):
    device = "cpu"

    def check_available(self) -> None:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise LatpruneError(f"backend {self.name} needs a CUDA GPU, and PyTorch sees none here")

    def description(self) -> dict:
        info = super().description()
        if self.device == "cuda":
            info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                        cudnn=torch.backends.cudnn.version())
        return info

    def __init__(self, threads: int | None = None):
        super().__init__(threads)
        self._held_bytes, self._held = 0, 0
        self._memory_budget: float | None = None  # half the memory available when the first network was prepared

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], layers: Sequence[str], path: Path) -> Prepared:
        """A copy of ``model`` held in memory (nothing is written or read back: no pickle). Refused when the copies
        held by this backend would take over half the memory available."""
        size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        if self._memory_budget is None:
            available = available_bytes()
            self._memory_budget = available / 2 if available is not None else float("inf")
        if self._held_bytes + size > self._memory_budget:
            raise LatpruneError(
                f"{self.name}: holding {self._held + 1} networks for timing would take "
                f"{(self._held_bytes + size) / 2 ** 30:.1f} GiB, over half the memory that was available "
                f"({2 * self._memory_budget / 2 ** 30:.1f} GiB); time fewer variants (--variants) or use the ort-cpu "
                f"backend, which keeps them on disk")
        module = copy.deepcopy(model).eval().to(self.device)
        self._held_bytes, self._held = self._held_bytes + size, self._held + 1
        return Prepared(path=path, layers=tuple(layers), module=module, input_shape=tuple(input_shape))

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def time(self, prepared: Prepared, warmup: int, runs: int, profiled_runs: int,
             warmup_ms: float = 0.0) -> RoundSample:
        torch.set_num_threads(self.threads)
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True
        model, x = prepared.module, torch.randn(prepared.input_shape, device=self.device)
        with torch.inference_mode():
            warm_up_visit(lambda: model(x), warmup, warmup_ms)
            self._sync()
            profiled, segments = self._profiled_runs(model, x, profiled_runs)
            plain = [self._timed(model, x) for _ in range(runs)]
        return RoundSample(plain, profiled, segments, {name: 1 for name in prepared.layers})

    def _timed(self, model: nn.Module, x: torch.Tensor) -> float:
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        model(x)
        return (time.perf_counter() - begin) * 1e3

    def _profiled_runs(self, model: nn.Module, x: torch.Tensor, count: int) -> tuple[list[float], list[dict]]:
        """Forward pre-hooks stamp (synchronised) the start of every conv/linear layer."""
        names = {m: n for n, m in model.named_modules()}
        stamps: list[tuple[str, float]] = []

        def stamp(module, _inputs):
            self._sync()
            stamps.append((names[module], time.perf_counter()))

        hooks = [m.register_forward_pre_hook(stamp) for m in model.modules() if isinstance(m, TIMED_TYPES)]
        totals, segments = [], []
        try:
            for _ in range(count):
                stamps.clear()
                self._sync()
                begin = time.perf_counter()
                model(x)
                self._sync()
                end = time.perf_counter()
                bounds = stamps + [("", end)]
                run: dict[str, float] = {"": (stamps[0][1] - begin) * 1e3} if stamps else {}
                for (name, t0), (_, t1) in zip(bounds, bounds[1:]):
                    run[name] = run.get(name, 0.0) + (t1 - t0) * 1e3
                totals.append((end - begin) * 1e3)
                segments.append(run)
        finally:
            for h in hooks:
                h.remove()
        return totals, segments


@register("torch-cpu")
class TorchCpuBackend(_TorchBackend):
    device = "cpu"


@register("torch-cuda")
class TorchCudaBackend(_TorchBackend):
    device = "cuda"


# ---------------------------------------------------------------- ONNX Runtime

class _OrtBackend(Backend):
    provider = "CPUExecutionProvider"

    def __init__(self, threads: int | None = None):
        super().__init__(threads)
        self._worker: subprocess.Popen | None = None
        self._maps: dict[Path, "NodeAttribution"] = {}

    def _request(self, **request) -> dict:
        if self._worker is None or self._worker.poll() is not None:
            self._worker = subprocess.Popen(
                [sys.executable, "-m", "latprune.profiler.ort_worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
        self._worker.stdin.write(json.dumps(request) + "\n")
        self._worker.stdin.flush()
        line = self._worker.stdout.readline()
        if not line:
            raise LatpruneError("the ONNX Runtime timing process died (see its messages above)")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise LatpruneError(f"ONNX Runtime failed: {reply['error']}")
        return reply

    def check_available(self) -> None:
        try:
            import onnxruntime  # noqa: F401  (checked here; sessions live in the worker only)
        except ImportError:
            raise LatpruneError(f"backend {self.name} needs the onnxruntime package") from None
        info = self._request(cmd="info", provider=self.provider)
        if not info["provider_available"]:
            raise LatpruneError(
                f"backend {self.name} needs ONNX Runtime's {self.provider} (install onnxruntime-gpu for CUDA); "
                f"available here: {', '.join(info['providers'])}"
            )

    def description(self) -> dict:
        info = super().description()
        info.update(onnxruntime=_onnxruntime_version(), provider=self.provider)
        if self.provider == "CUDAExecutionProvider" and torch.cuda.is_available():
            info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
        return info

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...], layers: Sequence[str], path: Path) -> Prepared:
        from latprune.onnx_export import export_onnx

        export_onnx(model, input_shape, path)
        prepared = Prepared(path=path, layers=tuple(layers))
        self._maps[path] = NodeAttribution.from_onnx(path, layers)
        return prepared

    def time(self, prepared: Prepared, warmup: int, runs: int, profiled_runs: int,
             warmup_ms: float = 0.0) -> RoundSample:
        # Every session gets a fresh process: measured here, sessions created after others in
        # one process ran pruned ResNet-50s up to 20% slower (allocator state), while fresh
        # processes (as in deployment) agree within a few percent.
        self.close()
        reply = self._request(cmd="time", onnx=str(prepared.path), provider=self.provider, threads=self.threads,
                              warmup=warmup, warmup_ms=warmup_ms, runs=runs, profiled_runs=profiled_runs)
        attribution = self._maps.get(prepared.path) or NodeAttribution.from_onnx(prepared.path, prepared.layers)
        self._maps[prepared.path] = attribution
        segments, counts = [], {}
        for nodes in reply["node_runs"]:
            run, counts = attribution.segments(nodes)
            segments.append(run)
        return RoundSample(reply["plain_ms"], reply["profiled_ms"], segments, counts)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stdin.close()
            self._worker.wait(timeout=10)
            self._worker = None


def _onnxruntime_version() -> str:
    """The installed ONNX Runtime's version, read from package metadata (no import, no worker)."""
    from importlib import metadata

    for distribution in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "missing"


@register("ort-cpu")
class OrtCpuBackend(_OrtBackend):
    provider = "CPUExecutionProvider"


@register("ort-cuda")
class OrtCudaBackend(_OrtBackend):
    provider = "CUDAExecutionProvider"
