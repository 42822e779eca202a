"""Reconstruct the dense network's layer outputs with the kept channels by gradient steps (two-stage).

Two-stage (Li et al., post-training structured pruning via two-stage reconstruction):

- phase 1, before removal: on the full-width network, Adam minimises the summed relative
  reconstruction error of every tap's kept channels against the dense network while a
  growing penalty drives the channels chosen for removal (producer filters and biases,
  BatchNorm scale and shift, consumer input slices) to zero, so their information moves
  into the kept channels before they disappear;
- phase 2, after removal: the pruned network runs on its own activations, so errors that
  accumulate through depth are corrected, with loss
  ``sum_layers ||Y_pruned - Y_dense[:, kept]||^2 / ||Y_dense[:, kept]||^2``.

Earlier layers get smaller learning rates (linear ramp from ``early_lr_scale`` to 1).
BatchNorms stay in eval mode throughout, so each one is a fixed affine map being tuned.
Ridge, the closed-form alternative to phase 2, is :mod:`latprune.recovery.ridge`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

from latprune.batching import batch_size_for
from latprune.graph import LayerSlice
from latprune.memory_format import channels_last
from latprune.recovery.taps import Tap, capture_outputs, select_channels
from latprune.recovery.timebox import StepBox, Steps


@dataclass
class ReconstructionSettings:
    batch_size: int = 64
    phase1_epochs: int = 5
    phase2_epochs: int = 5
    # 1e-3: measured against 3e-3 (two-stage, default epochs): cifar resnet56 0.5x MACs 80.7 vs 80.3%, 0.35x 74.9 vs
    # 73.2% (2,000 test images); EfficientNet-Lite0 at 1.5x, 8 + 8 steps, 52.7 vs 36.0% (300 sample photos).
    lr: float = 1e-3
    early_lr_scale: float = 0.1
    decay_start: float = 0.001
    decay_end: float = 0.3
    ridge: float = 1e-3
    positions_per_image: int = 32
    # Ridge also refits convolutions that pad with a child module first (EfficientNet-Lite's depthwise layers): on
    # Lite0 at 1.5x, 50 layers instead of 33, ridge alone 51.3% vs 46.0% top-1, but 2x the time (the search's
    # finalists, ranked by ridge, leave them out).
    padded_layers: bool = True
    seed: int = 0
    # Two-stage (and ridge-tuned) end by refitting the output layer in closed form (latprune/recovery/output_layer.py):
    # cifar resnet56 0.5x plans with the last block removed 73.9-75.8% -> 76.1-77.5%, the others within a point.
    refit_output: bool = True
    # Two-stage's wall-time box in seconds (None: every epoch). Half goes to phase 1, the rest to phase 2; each
    # phase times its first step and does as many of its steps as fit (at least one).
    seconds: float | None = None


def reconstruction_loss(
    got: Mapping[str, torch.Tensor],
    want: Mapping[str, torch.Tensor],
    taps: Sequence[Tap],
    kept_in_got: Mapping[str, torch.Tensor],
    kept_in_want: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Sum over taps of ||Y - Y_dense||^2 / ||Y_dense||^2 on the kept channels.

    Written with norms: on EfficientNet-Lite0's largest tap (64 x 96 x 112 x 112, channels-last) 0.13 s forward and
    0.21 s backward, against 0.27 s and 0.25 s as a sum of squared differences; ``mse_loss(reduction="sum")`` was
    fast too but its float32 sum came out 1.5% off there."""
    total = torch.zeros(())
    for tap in taps:
        y = select_channels(got[tap.output], kept_in_got.get(tap.layer))
        target = select_channels(want[tap.output], kept_in_want.get(tap.layer))
        total = total + (torch.linalg.vector_norm(y - target).square()
                         / torch.linalg.vector_norm(target).square().clamp_min(1e-12))
    return total


def _optimizer(model: nn.Module, taps: Sequence[Tap], settings: ReconstructionSettings) -> torch.optim.Adam:
    modules = dict(model.named_modules())
    groups, seen = [], set()
    for depth, tap in enumerate(taps):
        scale = settings.early_lr_scale + (1 - settings.early_lr_scale) * depth / max(len(taps) - 1, 1)
        params = [p for name in (tap.layer, tap.norm) if name for p in modules[name].parameters(recurse=False)]
        params = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "lr": settings.lr * scale})
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr": settings.lr})
    return torch.optim.Adam(groups)


def _epochs(
    model: nn.Module,
    dense: nn.Module,
    taps: Sequence[Tap],
    kept_in_model: Mapping[str, torch.Tensor],
    kept_in_dense: Mapping[str, torch.Tensor],
    calib: torch.Tensor,
    epochs: int,
    settings: ReconstructionSettings,
    desc: str,
    after_step: Callable[[float], None] | None = None,
    progress: bool = False,
    seconds: float | None = None,
) -> Steps:
    """Adam epochs on the tap reconstruction loss, calling ``after_step(fraction done)``; mean loss per epoch.
    Within ``seconds`` (when given): only as many steps as fit at their early pace are planned (:class:`StepBox`)."""
    names = [t.output for t in taps]
    optimizer = _optimizer(model, taps, settings)
    generator = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = (len(calib) + settings.batch_size - 1) // settings.batch_size
    box = StepBox(epochs * steps_per_epoch, seconds)
    model.eval()
    dense.eval()
    history = []
    bar = tqdm(total=box.total, desc=desc, unit="step", disable=not progress, leave=False)
    with (channels_last(model, dense, example=calib) as layout,
          capture_outputs(model, names) as got, capture_outputs(dense, names) as want):
        for _ in range(epochs):
            if box.finished:
                break
            order = torch.randperm(len(calib), generator=generator)
            losses = []
            for batch_order in order.split(settings.batch_size):
                if box.finished:
                    break
                batch = layout(calib[batch_order])
                with torch.no_grad():
                    dense(batch)
                model(batch)
                loss = reconstruction_loss(got, want, taps, kept_in_model, kept_in_dense)
                losses.append(float(loss.detach()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.total = box.step_done()
                if after_step is not None:
                    after_step(box.done / box.total)
                bar.update()
            history.append(sum(losses) / len(losses))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    model.eval()
    return Steps(history, box.done, box.planned)


def removal_decay(model: nn.Module, removed_slices: Sequence[LayerSlice]) -> Callable[[float], None]:
    """A growing L2 penalty on every parameter slice of the channels about to be removed.

    Applied as its proximal step after each optimiser step (decoupled weight decay on
    those slices only): the slices shrink by a factor ``1 - rate`` whose rate grows
    geometrically with the fraction of phase 1 done, so they reach zero whatever the
    optimiser's step normalisation, and removal at the end changes almost nothing.
    """
    modules = dict(model.named_modules())
    pieces = []
    for s in removed_slices:
        idxs = torch.as_tensor(s.idxs, dtype=torch.long)
        for name, param in modules[s.layer].named_parameters(recurse=False):
            if s.side == "out":
                pieces.append((param, 0, idxs))
            elif param.dim() >= 2 and name == "weight":
                pieces.append((param, 1, idxs))

    def shrink(rate: float) -> None:
        with torch.no_grad():
            for param, dim, idxs in pieces:
                if dim == 0:
                    param[idxs] *= 1 - rate
                else:
                    param[:, idxs] *= 1 - rate

    return shrink


def phase_one(
    model: nn.Module,
    dense: nn.Module,
    taps: Sequence[Tap],
    kept: Mapping[str, torch.Tensor],
    removed_slices: Sequence[LayerSlice],
    calib: torch.Tensor,
    settings: ReconstructionSettings,
    progress: bool = False,
    seconds: float | None = None,
) -> Steps:
    """Phase 1 on the full-width ``model`` (a copy of ``dense``): reconstruct kept channels, squeeze out the rest."""
    shrink = removal_decay(model, removed_slices)
    ratio = settings.decay_end / settings.decay_start

    def after_step(done: float) -> None:
        shrink(settings.decay_start * ratio**done)

    return _epochs(model, dense, taps, kept, kept, calib, settings.phase1_epochs, settings, "two-stage phase 1",
                   after_step, progress, seconds)


def phase_two(
    pruned: nn.Module,
    dense: nn.Module,
    taps: Sequence[Tap],
    kept: Mapping[str, torch.Tensor],
    calib: torch.Tensor,
    settings: ReconstructionSettings,
    progress: bool = False,
    seconds: float | None = None,
) -> Steps:
    """Phase 2 on the pruned network: reconstruct dense kept channels from its own activations."""
    return _epochs(pruned, dense, taps, {}, kept, calib, settings.phase2_epochs, settings, "two-stage phase 2",
                   None, progress, seconds)


def tap_errors(
    pruned: nn.Module, dense: nn.Module, taps: Sequence[Tap], kept: Mapping[str, torch.Tensor], calib: torch.Tensor,
    batch_size: int = 128,
) -> float:
    """The mean reconstruction loss (summed over taps) of ``pruned`` on ``calib``, in batches of at most
    ``batch_size`` images (fewer for large images: every tap's output of both networks is held at once)."""
    names = [t.output for t in taps]
    total, count = 0.0, 0
    pruned.eval()
    dense.eval()
    with (torch.no_grad(), channels_last(pruned, dense, example=calib) as layout,
          capture_outputs(pruned, names) as got, capture_outputs(dense, names) as want):
        for batch in calib.split(batch_size_for(calib.shape, batch_size)):
            batch = layout(batch)
            pruned(batch)
            dense(batch)
            total += float(reconstruction_loss(got, want, taps, {}, kept)) * len(batch)
            count += len(batch)
    return total / max(count, 1)
