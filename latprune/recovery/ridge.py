"""Ridge reconstruction: a closed-form alternative to two-stage's phase 2.

Layer by layer in execution order, a ridge least-squares fit (convolutions unfolded im2col-style
at a random subset of output positions per image) of the layer's weights and shift from the
pruned network's own inputs to the dense tap outputs. Each layer's inputs come from one walk of
the network (:mod:`latprune.recovery.layer_walk`), so the fit costs about one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from latprune.memory_format import channels_last
from latprune.recovery.layer_walk import walked_inputs
from latprune.recovery.reconstruction import ReconstructionSettings
from latprune.recovery.taps import Tap, capture_outputs, select_channels

GROUPS_PER_SOLVE = 128  # groups of a grouped convolution fitted at once (a depthwise layer has up to thousands)


def _rows(layer: nn.Module, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """The layer's input as regression rows (N*P, features): im2col for convolutions."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if positions is None:
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    else:
        cols = _patches_at(layer, x, positions)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _patches_at(layer: nn.Conv2d, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``F.unfold(x)[:, :, positions]`` for the layer's geometry, gathering only the patches at those output
    positions (unfolding a 112x112 map to keep 32 of its positions cost most of ridge's time on EfficientNet-Lite0)."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = layer.kernel_size, layer.stride, layer.dilation, layer.padding
    height, width = x.shape[2:]
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    top, left = positions // out_w * sh - ph, positions % out_w * sw - pw
    patches = []  # each (N, C, P): one kernel offset, zero where it falls in the padding
    for i in range(kh):
        for j in range(kw):
            rows, cols = top + i * dh, left + j * dw
            inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
            picked = x[:, :, rows.clamp(0, height - 1), cols.clamp(0, width - 1)]
            patches.append(picked if bool(inside.all()) else torch.where(inside, picked, 0.0))
    return torch.stack(patches, 2).reshape(x.shape[0], -1, len(positions))


def _targets(y: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    if y.dim() == 2:
        return y
    if positions is not None and y.dim() == 4:  # gathered in place: flattening a channels-last map would copy it
        y = y[:, :, positions // y.shape[3], positions % y.shape[3]]
    else:
        y = y.flatten(2) if positions is None else y.flatten(2)[:, :, positions]
    return y.transpose(1, 2).reshape(-1, y.shape[1])


def _row_source(layer: nn.Module, padded: bool = True) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the regression rows unfold: the layer's input for a plain convolution or linear map; for a convolution
    that pads in its own forward ("same" padding built in), the output of its one parameter-free child where
    probing shows the layer convolves that (EfficientNet-Lite's ``static_padding``) and ``padded`` allows it; else
    None (a layer padding inline: the rows would miss the padding)."""
    if isinstance(layer, nn.Linear):
        return _unchanged
    if not (isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple)):
        return None
    if type(layer).forward is nn.Conv2d.forward:
        return _unchanged
    candidates = [_unchanged]
    children = list(layer.children())
    if padded and len(children) == 1 and not list(children[0].parameters()) and not list(children[0].buffers()):
        candidates.append(children[0])  # parameter-free: a padding, not a layer of its own
    side = 2 * max(layer.kernel_size) * max(layer.dilation) + 3
    for source in candidates:
        generator = torch.Generator().manual_seed(0)
        if all(_convolves(layer, source, torch.randn(1, layer.in_channels, size, size, generator=generator))
               for size in (side, side + 1)):  # odd and even: one-sided padding shows only at some sizes
            return source
    return None


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


def _convolves(layer: nn.Conv2d, source: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> bool:
    """Whether ``layer(x)`` is the plain convolution of ``source(x)``."""
    x = x.to(layer.weight.dtype)
    with torch.no_grad():
        got = layer(x)
        plain = F.conv2d(source(x), layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation,
                         layer.groups)
    return got.shape == plain.shape and torch.allclose(got, plain, rtol=1e-4, atol=1e-5)


def _fold_solution(layer: nn.Module, norm: nn.Module | None, weight: torch.Tensor, shift: torch.Tensor) -> None:
    """Write ``tap(x) = weight @ x + shift`` into the layer (and its eval-mode BatchNorm)."""
    with torch.no_grad():
        if norm is None:
            layer.weight.copy_(weight.reshape(layer.weight.shape))
            if layer.bias is not None:
                layer.bias.copy_(shift)
            return
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        ok = scale.abs() > 1e-8
        per_row = (-1,) + (1,) * (layer.weight.dim() - 1)
        new_weight = weight.reshape(layer.weight.shape) / torch.where(ok, scale, 1).reshape(per_row)
        layer.weight.copy_(torch.where(ok.reshape(per_row), new_weight, layer.weight))
        conv_bias = layer.bias if layer.bias is not None else torch.zeros_like(norm.bias)
        new_beta = shift - scale * (conv_bias - norm.running_mean)
        norm.bias.copy_(torch.where(ok, new_beta, norm.bias))


def ridge_reconstruct(
    pruned: nn.Module,
    dense: nn.Module,
    taps: Sequence[Tap],
    kept: Mapping[str, torch.Tensor],
    calib: torch.Tensor,
    settings: ReconstructionSettings,
    progress: bool = False,
) -> dict[str, int]:
    """Layer by layer in execution order, refit each tap by ridge least squares on sampled positions."""
    modules_p = dict(pruned.named_modules())
    generator = torch.Generator().manual_seed(settings.seed)
    sources = {t.layer: _row_source(modules_p[t.layer], settings.padded_layers) for t in taps}
    solvable = [t for t in taps if sources[t.layer] is not None]
    pruned.eval()
    dense.eval()
    positions: dict[str, torch.Tensor | None] = {}
    targets: dict[str, list[torch.Tensor]] = {t.output: [] for t in solvable}
    with (torch.no_grad(), channels_last(dense, example=calib) as layout,
          capture_outputs(dense, [t.output for t in solvable]) as want):
        for batch in calib.split(settings.batch_size):
            dense(layout(batch))
            for tap in solvable:
                y = want[tap.output]
                if tap.output not in positions:
                    spots = y[0].numel() // y.shape[1]
                    positions[tap.output] = None if y.dim() == 2 or spots <= settings.positions_per_image else (
                        torch.randperm(spots, generator=generator)[: settings.positions_per_image])
                # the kept channels picked from the gathered rows (N * P, C): picking them from the map cost more
                targets[tap.output].append(select_channels(_targets(y, positions[tap.output]), kept.get(tap.layer)))
    solved = 0
    with (channels_last(pruned, example=calib) as layout,
          walked_inputs(pruned, [layout(b) for b in calib.split(settings.batch_size)],
                        [t.layer for t in solvable]) as inputs_of):
        for tap in tqdm(solvable, desc="ridge reconstruction", unit="layer", disable=not progress, leave=False):
            layer = modules_p[tap.layer]
            with torch.no_grad():
                x = torch.cat([_rows(layer, sources[tap.layer](i), positions[tap.output])
                               for i in inputs_of(tap.layer)])
            solved += _refit(layer, modules_p[tap.norm] if tap.norm else None, x, torch.cat(targets[tap.output]),
                             settings.ridge)
    return {"layers": solved, "skipped": len(taps) - solved}


def _refit(layer: nn.Module, norm: nn.Module | None, x: torch.Tensor, y: torch.Tensor, ridge: float) -> int:
    """Fit ``layer`` (and ``norm``) by ridge from rows ``x`` to targets ``y`` (in double precision), each group of a
    grouped convolution on its own; 1 if refitted, 0 if the layer cannot represent the fitted shift."""
    if norm is None and layer.bias is None:
        return 0  # a shift it cannot represent would bias the fit; keep the layer as it is
    groups = getattr(layer, "groups", 1)
    if groups == 1:
        weight, shift = ridge_solution(x.double(), y.double(), ridge)
    else:
        rows_in, rows_out = x.reshape(len(x), groups, -1), y.reshape(len(y), groups, -1)
        chunks = [slice(first, first + GROUPS_PER_SOLVE) for first in range(0, groups, GROUPS_PER_SOLVE)]
        fits = [_ridge_grouped(rows_in[:, c].transpose(0, 1).contiguous().double(),
                               rows_out[:, c].transpose(0, 1).contiguous().double(), ridge) for c in chunks]
        weight, shift = torch.cat([w for w, _ in fits]), torch.cat([b for _, b in fits])
    _fold_solution(layer, norm, weight.to(layer.weight.dtype), shift.to(layer.weight.dtype))
    return 1


def _ridge_grouped(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ridge_solution` of every group at once: rows ``x`` (groups, N, in) and targets ``y`` (groups, N,
    out); the weights (groups * out, in) and shifts (groups * out) of the groups in order."""
    x_mean, y_mean = x.mean(1, keepdim=True), y.mean(1, keepdim=True)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.transpose(1, 2) @ xc
    lam = ridge * gram.diagonal(dim1=1, dim2=2).sum(1) / gram.shape[1] + 1e-12
    gram.diagonal(dim1=1, dim2=2).add_(lam[:, None])
    w = torch.linalg.solve(gram, xc.transpose(1, 2) @ yc).transpose(1, 2)  # (groups, out, in)
    b = y_mean[:, 0] - (w @ x_mean.transpose(1, 2))[:, :, 0]
    return w.reshape(-1, w.shape[2]), b.reshape(-1)


def ridge_solution(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares ``y ~ x @ w.T + b`` with an L2 penalty relative to the mean feature variance."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    lam = ridge * torch.trace(gram) / gram.shape[0] + 1e-12
    gram.diagonal().add_(lam)
    w = torch.linalg.solve(gram, xc.T @ yc).T
    b = y_mean - w @ x_mean
    return w, b
