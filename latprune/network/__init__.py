"""The network vocabulary every stage shares: layer signatures, measurements, layer tracing, model keys.

This package sits at the bottom: it imports no stage (profiler, perfmodel, planner,
recovery), and every stage imports it.
"""

from latprune.network.keys import model_key
from latprune.network.measurement import CONFIDENCE, Measurement, PairedRatio, paired_interval, paired_ratio
from latprune.network.signature import ALIGNMENT_CAP, SIGNATURE_VERSION, LayerSignature, channel_alignment
from latprune.network.tracing import (
    DTYPE,
    TIMED_TYPES,
    LayerInfo,
    layer_signatures,
    layer_widths,
    network_signatures,
    run_model,
    trace_layers,
)

__all__ = ["ALIGNMENT_CAP", "CONFIDENCE", "DTYPE", "SIGNATURE_VERSION", "TIMED_TYPES", "LayerInfo", "LayerSignature",
           "Measurement", "PairedRatio", "channel_alignment", "layer_signatures", "layer_widths", "model_key",
           "network_signatures", "paired_interval", "paired_ratio", "run_model", "trace_layers"]
