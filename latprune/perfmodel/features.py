"""Numeric features of a layer signature for latency regression.

Besides sizes and FLOPs they carry the channel alignment of the backend: MACs with
widths rounded up to the detected step and whether each width (and the next layer's) is
off the step grid, so a model can learn latency staircases rather than a smooth FLOPs line.
"""

from __future__ import annotations

import math

import numpy as np

from latprune.network import LayerSignature

EPILOGUE_OPS = ("add", "relu", "relu6", "hardswish", "silu", "sigmoid", "hardsigmoid", "mul", "max_pool2d",
                "avg_pool2d", "adaptive_avg_pool2d", "cat", "batch_norm", "pad", "gelu")

FEATURE_NAMES = (
    "log_cin", "log_cout", "log_hw", "kernel", "stride", "log_groups", "depthwise", "log_macs",
    "log_padded_macs", "log_bytes", "cin_off_grid", "cout_off_grid", "cin_steps", "cout_steps", "next_off_grid",
    "log2_next_align",
    *(f"epi_{op}" for op in EPILOGUE_OPS),
)


def bytes_moved(signature: LayerSignature) -> float:
    """Float32 bytes read and written: input, weights and output activations."""
    out_hw = signature.height * signature.width / (signature.stride[0] * signature.stride[1])
    inputs = signature.batch * signature.cin * signature.height * signature.width
    weights = signature.cout * (signature.cin // signature.groups) * signature.kernel[0] * signature.kernel[1]
    outputs = signature.batch * signature.cout * out_hw
    return 4.0 * (inputs + weights + outputs)


def next_off_grid(signature: LayerSignature, step: int) -> float:
    """1 when the next layer's channels are off the step grid (a blocked layout is converted after this layer)."""
    return float(0 < signature.next_align < step)


def layer_features(signature: LayerSignature, step: int) -> np.ndarray:
    epilogue = set(signature.epilogue.split("+")) if signature.epilogue else set()
    return np.array([
        math.log(signature.cin),
        math.log(signature.cout),
        math.log(signature.height * signature.width),
        signature.kernel[0] * signature.kernel[1],
        signature.stride[0],
        math.log(signature.groups),
        float(signature.depthwise),
        math.log(max(signature.macs, 1)),
        math.log(max(signature.padded_macs(step), 1)),
        math.log(bytes_moved(signature)),
        float(signature.cin % step != 0),
        float(signature.cout % step != 0),
        math.ceil(signature.cin / step),
        math.ceil(signature.cout / step),
        next_off_grid(signature, step),
        math.log2(signature.next_align + 1),
        *(float(op in epilogue) for op in EPILOGUE_OPS),
    ])


def feature_matrix(signatures, step: int) -> np.ndarray:
    return np.stack([layer_features(s, step) for s in signatures]) if signatures else np.zeros((0, len(FEATURE_NAMES)))
