"""ONNX Runtime timing worker: a separate process with no PyTorch in it.

Reads one JSON request per line on stdin, answers one JSON line on stdout. Only one
session is alive at a time; it is dropped before the next request is served.

Requests: ``{"cmd": "info", "provider": P}`` and ``{"cmd": "time", "onnx": PATH,
"provider": P, "threads": T, "warmup": W, "warmup_ms": M, "runs": N, "profiled_runs": K}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

from latprune.profiler.visit_warmup import warm_up_visit


def _session(path: str, provider: str, threads: int, profile_dir: str | None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "ort")
    return ort.InferenceSession(path, options, providers=[provider])


def _input_for(session) -> dict:
    spec = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    return {spec.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def _node_runs(profile_path: str, skip: int) -> tuple[list[list], list[float]]:
    """Per timed run: the kernel events [name, op, ms] in execution order, and the run's ms."""
    with open(profile_path) as f:
        events = json.load(f)
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])[skip:]
    kernels = sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                     key=lambda e: e["ts"])
    runs, totals = [], []
    for run in model_runs:
        start, end = run["ts"], run["ts"] + run["dur"]
        runs.append([[e["name"][: -len("_kernel_time")], e["args"].get("op_name", ""), e["dur"] / 1e3]
                     for e in kernels if start <= e["ts"] <= end])
        totals.append(run["dur"] / 1e3)
    return runs, totals


def time_model(onnx: str, provider: str, threads: int, warmup: int, runs: int, profiled_runs: int,
               warmup_ms: float = 0.0) -> dict:
    """Per-node times from a profiling session, then plain whole-network times from a session of its own: a
    variant's plain times must be comparable with a dense network timed without profiling (the closed loop's
    paired ratio, taken from a profiling session's plain runs, disagreed with an independent one by up to 15%).
    Each session warms up for ``warmup`` runs and ``warmup_ms`` first: this process is new, and its first
    milliseconds run slower (see :mod:`latprune.profiler.visit_warmup`)."""
    with tempfile.TemporaryDirectory() as profile_dir:
        node_runs, profiled_totals = [], []
        if profiled_runs:
            session = _session(onnx, provider, threads, profile_dir)
            feed = _input_for(session)
            warmed = warm_up_visit(lambda: session.run(None, feed), warmup, warmup_ms)
            for _ in range(profiled_runs):
                session.run(None, feed)
            node_runs, profiled_totals = _node_runs(session.end_profiling(), skip=warmed)
            del session
        session = _session(onnx, provider, threads, None)
        feed = _input_for(session)
        warm_up_visit(lambda: session.run(None, feed), warmup, warmup_ms)
        plain = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feed)
            plain.append((time.perf_counter() - start) * 1e3)
        del session
    return {"plain_ms": plain, "profiled_ms": profiled_totals, "node_runs": node_runs}


def info(provider: str) -> dict:
    return {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "provider_available": provider in ort.get_available_providers(),
    }


def main() -> None:
    # Ctrl-C reaches the whole process group; the parent reports it and closes this worker's stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            command = request.pop("cmd")
            result = time_model(**request) if command == "time" else info(**request)
            reply = {"ok": True, **result}
        except Exception as exc:  # reported to the parent, which raises it there
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
