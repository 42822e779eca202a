"""The profiler's public entry points: what other stages, the pipeline and the benchmarks may use.

Everything else in ``latprune.profiler`` is internal. (This module imports PyTorch; the
package ``__init__`` stays import-free so the ONNX Runtime worker starts without it.)
"""

from latprune.profiler.backends import BACKENDS, describe_device, get_backend
from latprune.profiler.device import cpu_identity, cpu_model, fingerprint, physical_cores
from latprune.profiler.measure import measure_models, measure_paired, profiled_quiet_ms
from latprune.profiler.runner import ProfileReport, ProfileSettings, profile_model
from latprune.profiler.store import (PROFILE_HASH_PREFIX, DeviceSummary, LayerTiming, NetworkTiming, ProfileStore,
                                     default_db_path)
from latprune.profiler.timer import PairedTiming, RoundsRule, Timer
from latprune.profiler.variant_timer import VariantTimer, VariantTiming

__all__ = ["BACKENDS", "PROFILE_HASH_PREFIX", "DeviceSummary", "LayerTiming", "NetworkTiming", "PairedTiming",
           "ProfileReport", "ProfileSettings", "ProfileStore", "RoundsRule", "Timer", "VariantTimer", "VariantTiming",
           "cpu_identity", "cpu_model", "default_db_path", "describe_device", "fingerprint", "get_backend",
           "measure_models", "measure_paired", "physical_cores", "profile_model", "profiled_quiet_ms"]
