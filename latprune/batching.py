"""How many images one forward pass takes: fewer when each image is large.

A batch's activations grow with its images' size. At 224x224 a batch of 256 allocates gigabytes
per activation, and a run of EfficientNet-Lite0 spent most of its evaluation in the kernel (page
faults, reclaim): top-1 on 1,000 photos took 160 s at batch 256 and 33 s at batch 32 in a process
holding 10 GB, 37 s and 22 s in a fresh one. CIFAR-sized images keep batches of 256.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from latprune.memory_format import channels_last

VALUES_PER_BATCH = 2**22  # input values per forward pass (about 28 images at 3x224x224)
MAX_BATCH = 256


def batch_size_for(input_shape: Sequence[int], most: int = MAX_BATCH) -> int:
    """Images per forward pass for inputs of ``input_shape`` (N, C, H, W...; N is ignored), at most ``most``."""
    values = math.prod(int(s) for s in input_shape[1:])
    return max(1, min(most, VALUES_PER_BATCH // max(values, 1)))


def forward_in_batches(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model(images)`` without gradients, computed in batches of :func:`batch_size_for` images (channels-last
    where the model allows: :mod:`latprune.memory_format`)."""
    with torch.no_grad(), channels_last(model, example=images) as layout:
        return torch.cat([model(layout(batch)).contiguous() for batch in images.split(batch_size_for(images.shape))])
