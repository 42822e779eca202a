"""A memory estimate before a very large input is built: analysing a model keeps every activation of a
traced forward pass, and an input shape such as 1x3x4096x4096 would otherwise be killed by the kernel
(or die in the allocator) minutes later instead of being refused in one line."""

from __future__ import annotations

import copy
import math
import os

import torch
import torch.nn as nn

from latprune.errors import LatpruneError

# Below this many input pixels (batch x height x width) no model in reach needs an estimate.
CHECK_FROM_PIXELS = 1024 * 1024
# Tracing holds the activations for autograd while the dependency graph and the probes run copies.
TRACING_FACTOR = 2.0


def activation_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """Bytes of every module output in one forward pass at ``input_shape``, found on the meta device (no memory
    used); None when the model cannot run there (data-dependent code, tensors outside its state)."""
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    try:
        meta = copy.deepcopy(model).to("meta")
        hooks = [m.register_forward_hook(count) for m in meta.modules() if not list(m.children())]
        with torch.no_grad():
            meta(torch.empty(input_shape, device="meta"))
        for hook in hooks:
            hook.remove()
    except Exception:
        return None
    return total + math.prod(input_shape) * 4


def available_bytes() -> int | None:
    """Memory the kernel says is available now (``MemAvailable``), or None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(model: nn.Module, spec: str, input_shape: tuple[int, ...]) -> None:
    """Refuse an input shape whose analysis would need more memory than this machine has available."""
    if input_shape[0] * math.prod(input_shape[2:]) < CHECK_FROM_PIXELS:
        return
    activations, available = activation_bytes(model, input_shape), available_bytes()
    if activations is None or available is None:
        return
    needed = TRACING_FACTOR * activations
    if needed > available:
        shape = "x".join(map(str, input_shape))
        raise LatpruneError(f"input shape {shape} needs about {needed / 2**30:.1f} GiB to analyse {spec} "
                            f"(activations of traced forward passes); {available / 2**30:.1f} GiB is available: "
                            f"use a smaller --input-shape")
