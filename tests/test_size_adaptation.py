"""Adapting a network at a smaller input size to its own outputs at its own size: it learns them, its BatchNorm
statistics stay, and it leaves the network as it found it in every other respect."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from latprune.errors import LatpruneError
from latprune.size_adaptation import AdaptationSettings, adapt_to_reference


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def trained_statistics(model: nn.Module) -> nn.Module:
    """Running statistics that differ from the initial ones, as a trained network's do."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def photos_and_reference(count: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Small photos, and outputs on them at twice the size, of a network the adapted one must learn to follow (another
    initialisation, so that there is something to learn)."""
    generator = torch.Generator().manual_seed(1)
    large = torch.rand(count, 3, 16, 16, generator=generator)
    model = trained_statistics(small_cnn(seed=1))
    with torch.no_grad():
        reference = model(large)
    return F.interpolate(large, size=(8, 8), mode="bilinear", antialias=True, align_corners=False), reference


def test_the_network_learns_its_outputs_at_its_own_size_and_keeps_its_statistics():
    photos, reference = photos_and_reference()
    model = trained_statistics(small_cnn())
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    result = adapt_to_reference(model, photos, reference, AdaptationSettings(epochs=20, lr=3e-3, batch_size=16,
                                                                             seconds=None))
    assert result.kl_after < 0.5 * result.kl_before
    assert result.steps.done == result.steps.planned == 20 * 4
    assert result.steps.losses[-1] < result.steps.losses[0]
    assert not model.training
    for name, value in model.state_dict().items():
        if "running" in name:
            assert torch.equal(value, statistics[name]), name  # BatchNorm statistics are kept
    assert all(p.grad is None for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # channels-last only while training
    with torch.no_grad():  # the figures it reports are the network's
        after = model(photos)
    kl = F.kl_div(F.log_softmax(after, 1), F.log_softmax(reference, 1), log_target=True, reduction="batchmean")
    assert result.kl_after == pytest.approx(float(kl), rel=1e-3, abs=1e-6)
    assert result.agreement_after == pytest.approx(float((after.argmax(1) == reference.argmax(1)).float().mean()))
    assert result.to_json()["steps"] == 80 and "on the photos it learned from" in result.describe()


def test_the_time_box_cuts_the_steps():
    photos, reference = photos_and_reference()
    result = adapt_to_reference(trained_statistics(small_cnn()), photos, reference,
                                AdaptationSettings(epochs=1000, batch_size=16, seconds=0.5))
    assert result.steps.planned == 4000 and result.steps.done < result.steps.planned


def test_one_reference_output_per_photo_and_sane_settings_are_required():
    photos, reference = photos_and_reference()
    with pytest.raises(LatpruneError, match="one reference output per photo: 64 photos, 63 outputs"):
        adapt_to_reference(small_cnn(), photos, reference[:63])
    with pytest.raises(LatpruneError, match="size adaptation lr = 0"):
        AdaptationSettings(lr=0)
    with pytest.raises(LatpruneError, match="size adaptation seconds = nan"):
        AdaptationSettings(seconds=float("nan"))
