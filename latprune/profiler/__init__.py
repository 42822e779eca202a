"""Profiler: times every prunable layer inside the running network on a target backend.

Other stages, the pipeline and the benchmarks use its public entry points in
:mod:`latprune.profiler.api` (profile_model, measure_models, Timer, ProfileStore, backends
and device identity); everything else here is internal. This ``__init__`` imports nothing
heavy: the ONNX Runtime worker process (``latprune.profiler.ort_worker``) must start
without PyTorch in it.
"""
