"""Per-channel output corrections: layer-wise repair and Adaptive Signal Resuscitation (ASR).

Both compare each layer's output (before its BatchNorm) in the pruned network, fed its own
activations, with the dense network's kept channels on the same calibration images.

What recalibration already does. With recalibrated statistics a BatchNorm divides each
channel by its own pruned standard deviation where the dense network divided by the dense
one: per channel it applies the variance-matching gain ``g_c = sigma_d / sigma_p``, at
full strength however damaged the channel is. A gain written into the convolution before
that BatchNorm is undone exactly by recalibration, so the corrections below are written
into the BatchNorm's scale as ``gamma <- gamma * target_c / g_c``: the channel's net gain
becomes ``target_c``, and a later recalibration (which touches only running statistics)
keeps it. Layers without a BatchNorm take ``target_c`` in their weight and bias.

- ``layerwise``: ``target_c = g_L = sqrt(sum_c var_d,c / sum_c var_p,c)``, one gain for
  the layer.
- ``asr``: the channel gains shrunk toward the layer gain by empirical Bayes, on the log
  scale: ``log target_c = log g_L + w_c (log g_c - log g_L)`` with
  ``w_c = tau^2 / (tau^2 + e_c^2)``. ``e_c^2`` is how far ``log g_c`` can be from the gain the
  channel's *signal* needs: its sampling variance (delta method over per-image moments)
  plus ``(log rho_c)^2 / 4``, where ``rho_c`` is the correlation of the pruned channel with
  its dense counterpart (a channel that is signal times ``a`` plus noise has
  ``g_c = rho_c / a``, so a weak, noisy channel's variance-matching gain is unreliable).
  ``tau^2`` is the spread of true channel gains around the layer's, by method of moments:
  ``mean((log g_c - log g_L)^2) - mean(e_c^2)``. Reliable channels keep their own gain;
  damaged ones fall back to the layer's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

from latprune.recovery.taps import Tap, capture_outputs, select_channels


@dataclass
class PairedMoments:
    """Per-channel sums over images of per-image means of p, d, p*p, d*d, p*d (pruned p, dense d)."""

    images: int
    sums: torch.Tensor  # (C, 5)
    cross: torch.Tensor  # (C, 5, 5): sums of outer products of the per-image vectors

    @classmethod
    def empty(cls, channels: int) -> PairedMoments:
        return cls(0, torch.zeros(channels, 5, dtype=torch.float64), torch.zeros(channels, 5, 5, dtype=torch.float64))

    def add(self, pruned: torch.Tensor, dense: torch.Tensor) -> None:
        p = pruned.detach().double().flatten(2) if pruned.dim() > 2 else pruned.detach().double().unsqueeze(2)
        d = dense.detach().double().flatten(2) if dense.dim() > 2 else dense.detach().double().unsqueeze(2)
        per_image = torch.stack([p.mean(2), d.mean(2), (p * p).mean(2), (d * d).mean(2), (p * d).mean(2)], dim=2)
        self.images += p.shape[0]
        self.sums += per_image.sum(0)
        self.cross += torch.einsum("nci,ncj->cij", per_image, per_image)

    def statistics(self) -> dict[str, torch.Tensor]:
        """Means, variances, covariance, and the sampling variance of the log variance-matching gain."""
        n = self.images
        mean = self.sums / n
        mu_p, mu_d = mean[:, 0], mean[:, 1]
        var_p = (mean[:, 2] - mu_p**2).clamp_min(0)
        var_d = (mean[:, 3] - mu_d**2).clamp_min(0)
        cov = mean[:, 4] - mu_p * mu_d
        # Delta method over images for log g = (log var_d - log var_p) / 2, var = E[xx] - E[x]^2.
        zero = torch.zeros_like(mu_p)
        grad_var_p = torch.stack([-2 * mu_p, zero, torch.ones_like(mu_p), zero, zero], dim=1)
        grad_var_d = torch.stack([zero, -2 * mu_d, zero, torch.ones_like(mu_d), zero], dim=1)
        grad = 0.5 * (grad_var_d / var_d.clamp_min(1e-12)[:, None] - grad_var_p / var_p.clamp_min(1e-12)[:, None])
        moments_cov = self.cross / n - torch.einsum("ci,cj->cij", mean, mean)
        log_gain_se2 = torch.einsum("ci,cij,cj->c", grad, moments_cov, grad).clamp_min(0) / max(n - 1, 1)
        return {"mu_p": mu_p, "mu_d": mu_d, "var_p": var_p, "var_d": var_d, "cov": cov, "log_gain_se2": log_gain_se2}


def paired_moments(
    pruned: nn.Module,
    dense: nn.Module,
    taps: Sequence[Tap],
    kept: Mapping[str, torch.Tensor],
    calib: torch.Tensor,
    batch_size: int = 128,
    progress: bool = False,
) -> dict[str, PairedMoments]:
    """One pass over ``calib`` through both networks, accumulating each tap layer's paired moments.

    Moments are taken at the layer's own output (before its BatchNorm), where a gain is a
    plain rescaling of the signal.
    """
    names = [t.layer for t in taps]
    moments: dict[str, PairedMoments] = {}
    pruned.eval()
    dense.eval()
    with torch.no_grad(), capture_outputs(pruned, names) as got_p, capture_outputs(dense, names) as got_d:
        for batch in tqdm(calib.split(batch_size), desc="channel statistics", unit="batch",
                          disable=not progress, leave=False):
            pruned(batch)
            dense(batch)
            for tap in taps:
                p = got_p[tap.layer]
                d = select_channels(got_d[tap.layer], kept.get(tap.layer))
                if tap.layer not in moments:
                    moments[tap.layer] = PairedMoments.empty(p.shape[1])
                moments[tap.layer].add(p, d)
    return moments


EPS = 1e-12


def channel_gains(stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Channel-wise variance matching ``sigma_d / sigma_p``: what BatchNorm recalibration applies."""
    return torch.sqrt((stats["var_d"] + EPS) / (stats["var_p"] + EPS))


def layerwise_gains(stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Layer-wise variance matching: one gain for every channel of the layer."""
    gain = torch.sqrt((stats["var_d"].sum() + EPS) / (stats["var_p"].sum() + EPS))
    return gain.expand_as(stats["var_d"]).clone()


def asr_gains(stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Channel gains shrunk toward the layer gain by empirical Bayes (rule in the module docstring)."""
    log_channel = torch.log(channel_gains(stats))
    log_layer = torch.log(layerwise_gains(stats))
    rho2 = stats["cov"].pow(2) / ((stats["var_p"] + EPS) * (stats["var_d"] + EPS))
    error2 = stats["log_gain_se2"] + 0.25 * torch.log(rho2.clamp(1e-12, 1.0)).pow(2)
    spread2 = (log_channel - log_layer).pow(2).mean() - error2.mean()
    prior2 = spread2.clamp_min(1e-6)
    weight = prior2 / (prior2 + error2)
    return torch.exp(log_layer + weight * (log_channel - log_layer))


GAIN_RULES = {"asr": asr_gains, "layerwise": layerwise_gains}


def apply_gains(model: nn.Module, tap: Tap, gain: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> None:
    """Rescale the tap so that its net gain over the measured state becomes ``gain``.

    With a BatchNorm (already recalibrated, so already applying the channel-wise
    variance-matching gain) the BatchNorm's scale takes ``gain / channel gain``; without
    one, the layer's weight takes ``gain`` and its bias the matching mean shift.
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        if tap.norm:
            norm = modules[tap.norm]
            norm.weight.mul_((gain / channel_gains(stats)).to(norm.weight.dtype))
            return
        layer = modules[tap.layer]
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.mul_(gain.to(layer.weight.dtype).reshape(shape))
        if layer.bias is not None:
            shift = stats["mu_d"] - gain * stats["mu_p"]
            layer.bias.mul_(gain.to(layer.bias.dtype)).add_(shift.to(layer.bias.dtype))


def correct_outputs(
    pruned: nn.Module,
    dense: nn.Module,
    taps: Sequence[Tap],
    kept: Mapping[str, torch.Tensor],
    calib: torch.Tensor,
    rule: str,
    batch_size: int = 128,
    progress: bool = False,
) -> dict[str, float]:
    """Measure (on a recalibrated network) and apply one gain rule to every tap; returns a summary."""
    moments = paired_moments(pruned, dense, taps, kept, calib, batch_size, progress)
    relative = []
    for tap in taps:
        stats = moments[tap.layer].statistics()
        gain = GAIN_RULES[rule](stats)
        apply_gains(pruned, tap, gain, stats)
        relative.append(gain / channel_gains(stats))
    every = torch.cat(relative) if relative else torch.ones(1)
    return {
        "layers": len(taps),
        "relative_gain_median": round(float(every.median()), 4),
        "relative_gain_p10": round(float(every.quantile(0.1)), 4),
        "relative_gain_p90": round(float(every.quantile(0.9)), 4),
    }
