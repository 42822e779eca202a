"""BatchNorm recalibration: re-estimate running statistics of a pruned network from calibration images."""

from __future__ import annotations

import torch
import torch.nn as nn
from tqdm import tqdm

from latprune.batching import batch_size_for
from latprune.memory_format import channels_last
from latprune.recovery.taps import NORMS


def recalibrate_batchnorm(model: nn.Module, calib: torch.Tensor, batch_size: int | None = None,
                          progress: bool = False) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on ``calib``.

    BatchNorm layers run in train mode (everything else stays in eval mode, so dropout is
    off) under no_grad with ``momentum=None``: the running statistics become the plain
    average of the per-batch mean and unbiased variance. Returns the number of BatchNorms.
    ``batch_size``: default up to 128 images per batch, fewer for large images.
    """
    batch_size = batch_size or batch_size_for(calib.shape, 128)
    norms = [m for m in model.modules() if isinstance(m, NORMS) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad(), channels_last(model, example=calib) as layout:
            for batch in tqdm(calib.split(batch_size), desc="bn recalibration", unit="batch",
                              disable=not progress, leave=False):
                if len(batch) > 1:  # a single sample has no variance
                    model(layout(batch))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return len(norms)


def restate_batchnorm(model: nn.Module, calib: torch.Tensor, batch_size: int | None = None) -> int:
    """Set every BatchNorm's running statistics to its input's moments on ``calib``, keeping the function.

    One eval-mode pass measures each BatchNorm's input mean and variance; its scale and
    shift then compensate the new statistics exactly, so the network computes the same
    outputs. A network tuned with frozen statistics (two-stage, ridge) thereby agrees
    with a later recalibration (as in ``asr``) instead of being undone by it.
    """
    batch_size = batch_size or batch_size_for(calib.shape, 128)
    norms = {name: m for name, m in model.named_modules()
             if isinstance(m, NORMS) and m.track_running_stats and m.affine}
    if not norms:
        return 0
    sums: dict[str, list] = {}

    def hook_for(name):
        def hook(module, inputs):
            x = inputs[0].detach().double().transpose(0, 1).flatten(1)
            acc = sums.setdefault(name, [0, 0.0, 0.0])
            acc[0] += x.shape[1]
            acc[1] = acc[1] + x.sum(1)
            acc[2] = acc[2] + (x * x).sum(1)

        return hook

    hooks = [m.register_forward_pre_hook(hook_for(name)) for name, m in norms.items()]
    model.eval()
    try:
        with torch.no_grad(), channels_last(model, example=calib) as layout:
            for batch in calib.split(batch_size):
                model(layout(batch))
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for name, m in norms.items():
            if name not in sums:
                continue
            count, total, squares = sums[name]
            mean = (total / count).to(m.running_mean.dtype)
            var = (squares / count - (total / count) ** 2).clamp_min(0).to(m.running_var.dtype)
            old_std, new_std = torch.sqrt(m.running_var + m.eps), torch.sqrt(var + m.eps)
            m.bias.add_(m.weight * (mean - m.running_mean) / old_std)
            m.weight.mul_(new_std / old_std)
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    return len(norms)
