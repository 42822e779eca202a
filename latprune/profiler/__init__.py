"""Profiler: times every prunable layer inside the running network on a target backend.

This package's ``__init__`` imports nothing heavy: the ONNX Runtime worker process
(``latprune.profiler.ort_worker``) must start without PyTorch in it.
"""
