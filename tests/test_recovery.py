import copy
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from latprune.cli import main
from latprune.analysis import analyse
from latprune.data import calibration_tensor
from latprune.errors import LatpruneError
from latprune.channel_ops import ChannelMap
from latprune.groups import find_channel_groups
from latprune.models import load_model
from latprune.pruned_file import PrunedModel, load_pruned
from latprune.recovery import parse_recipe, recalibrate_batchnorm, recover
from latprune.recovery.batchnorm import restate_batchnorm
from latprune.recovery.reconstruction import ReconstructionSettings, phase_two, tap_errors
from latprune.recovery.taps import find_taps, kept_output_channels
from latprune.sparsity import global_magnitude_sparsify, weight_sparsity


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_bn_recalibration_reproduces_statistics_computed_directly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4))
    calib = torch.randn(96, 3, 12, 12)
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_()
        means, variances = [[], []], [[], []]
        for batch in calib.split(32):
            h = net[0](batch)
            means[0].append(h.mean((0, 2, 3)))
            variances[0].append(h.var((0, 2, 3), unbiased=True))
            h = net[1].weight[:, None, None] * (h - h.mean((0, 2, 3), keepdim=True)[0]) / torch.sqrt(
                h.var((0, 2, 3), unbiased=False, keepdim=True)[0] + net[1].eps) + net[1].bias[:, None, None]
            h = net[3](torch.relu(h))
            means[1].append(h.mean((0, 2, 3)))
            variances[1].append(h.var((0, 2, 3), unbiased=True))
    assert recalibrate_batchnorm(net, calib, batch_size=32) == 2
    for bn, mean, var in zip((net[1], net[4]), means, variances):
        torch.testing.assert_close(bn.running_mean, torch.stack(mean).mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, torch.stack(var).mean(0), rtol=1e-5, atol=1e-6)
    assert not net.training and net[1].momentum == 0.1


def test_a_gain_before_a_recalibrated_bn_cancels_but_asr_correction_survives(resnet20, pruned20, calib):
    x = calib[:8]
    # The trap the issue warns about: scale a conv's output channels, recalibrate, and the scale is gone.
    scaled = copy.deepcopy(pruned20.model)
    reference = copy.deepcopy(pruned20.model)
    with torch.no_grad():
        scaled.layer1[0].conv1.weight.mul_(torch.linspace(0.2, 3.0, scaled.layer1[0].conv1.out_channels)[:, None, None,
                                                                                                           None])
    recalibrate_batchnorm(scaled, calib)
    recalibrate_batchnorm(reference, calib)
    expected = _outputs(reference, x)
    torch.testing.assert_close(_outputs(scaled, x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    asr, report = recover(resnet20, pruned20, "asr", calib)
    bn_only, _ = recover(resnet20, pruned20, "bn", calib)
    before = _outputs(asr.model, x)
    again = copy.deepcopy(asr.model)
    recalibrate_batchnorm(again, calib)  # a further recalibration keeps the correction
    torch.testing.assert_close(_outputs(again, x), before, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(before, _outputs(bn_only.model, x), atol=1e-3)
    gammas = [m.weight for m in asr.model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_gammas = [m.weight for m in bn_only.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert any(not torch.allclose(a, b) for a, b in zip(gammas, bn_gammas))
    assert report.steps[0]["step"] == "asr" and report.steps[0]["layers"] == 20


def test_phase_two_lowers_the_layer_reconstruction_error(resnet20, pruned20, calib):
    x = resnet20.example_input()
    taps = find_taps(resnet20.model, x)
    groups = find_channel_groups(resnet20.model, x).groups
    kept = kept_output_channels(analyse(resnet20).layout, groups, pruned20.kept)
    model = copy.deepcopy(pruned20.model)
    before = tap_errors(model, resnet20.model, taps, kept, calib)
    history = phase_two(model, resnet20.model, taps, kept, calib, ReconstructionSettings(phase2_epochs=3,
                                                                                          batch_size=16))
    after = tap_errors(model, resnet20.model, taps, kept, calib)
    assert after < 0.8 * before
    assert history.losses[-1] < history.losses[0] and history.done == history.planned


def test_two_stage_within_a_time_box_does_the_steps_that_fit(resnet20, pruned20, calib):
    """A box far below one step's time: each phase does its first step only, and the report says so."""
    settings = ReconstructionSettings(phase1_epochs=3, phase2_epochs=3, batch_size=16, seconds=1e-6)
    _, report = recover(resnet20, pruned20, "two-stage", calib[:64], settings)
    step = report.steps[0]
    assert step["time_box_s"] == 1e-6
    for phase in ("phase1", "phase2"):
        assert step[phase]["steps"] == 1 and step[phase]["steps_planned"] == 12
        assert len(step[phase]["loss"]) == 1


@pytest.mark.parametrize("recipe", ["ridge", "two-stage", "ridge-tuned"])
def test_reconstruction_recipes_beat_plain_recalibration(resnet20, pruned20, calib, recipe):
    """Reconstruction (at its default learning rate: 16 + 16 steps on this random-weight toy) leaves a fifth less
    layer error than BatchNorm recalibration alone."""
    settings = ReconstructionSettings(phase1_epochs=8, phase2_epochs=8, batch_size=16)
    recovered, report = recover(resnet20, pruned20, recipe, calib[:32], settings)
    _, bn_report = recover(resnet20, pruned20, "bn", calib[:32])
    assert report.error_after < 0.8 * min(bn_report.error_after, report.error_before)
    assert recovered.widths == pruned20.widths
    assert pruned20.model is not recovered.model


def test_restating_batchnorm_keeps_the_function_and_agrees_with_recalibration(resnet20, pruned20, calib):
    model = copy.deepcopy(pruned20.model)  # stale statistics from the dense network
    x = calib[:8]
    before = _outputs(model, x)
    restate_batchnorm(model, calib)
    torch.testing.assert_close(_outputs(model, x), before, rtol=1e-4, atol=1e-4)
    restated = _outputs(model, x)
    recalibrate_batchnorm(model, calib, batch_size=64)
    assert (_outputs(model, x) - restated).abs().max() < 0.05 * restated.abs().max()


def test_taps_pair_each_convolution_with_its_batchnorm(resnet20, pruned20):
    taps = find_taps(resnet20.model, resnet20.example_input())
    assert len(taps) == 20 and taps[0].layer == "conv1" and taps[0].norm == "bn1"
    assert taps[-1].layer == "linear" and taps[-1].norm is None
    assert all(t.norm == t.layer.replace("conv", "bn") for t in taps[:-1])
    x = resnet20.example_input()
    groups = find_channel_groups(resnet20.model, x).groups
    kept = kept_output_channels(analyse(resnet20).layout, groups, pruned20.kept)
    modules = dict(pruned20.model.named_modules())
    widths = {name: m.out_width if isinstance(m, ChannelMap) else m.weight.shape[0] for name, m in modules.items()
              if name in kept}
    assert kept and all(len(idx) == widths[layer] for layer, idx in kept.items())
    assert kept["layer1.0.conv1"].tolist() == list(range(0, 16, 2))
    assert kept["layer2.0.shortcut"].tolist() == list(range(0, 32, 2))  # the pad shortcut's kept outputs


def test_sparsify_is_global_and_corrections_keep_the_zeros(resnet20, calib):
    model = copy.deepcopy(resnet20.model)
    per_layer = global_magnitude_sparsify(model, 0.7)
    assert weight_sparsity(model) == pytest.approx(0.7, abs=1e-3)
    assert max(per_layer.values()) - min(per_layer.values()) > 0.1  # one threshold, uneven layers
    sparse = PrunedModel(model, resnet20.spec, resnet20.input_shape, {}, resnet20.family, {"sparsity": 0.7})
    recovered, _ = recover(resnet20, sparse, "asr", calib)
    assert weight_sparsity(recovered.model) >= weight_sparsity(model)
    with pytest.raises(LatpruneError, match="unstructured"):
        recover(resnet20, sparse, "two-stage", calib)
    with pytest.raises(LatpruneError, match="sparsity"):
        global_magnitude_sparsify(model, 1.0)


def test_recipes_are_checked():
    assert parse_recipe("two-stage+asr") == ["two-stage", "asr"]
    assert parse_recipe("none") == []
    with pytest.raises(LatpruneError, match="unknown recovery method 'asrr'"):
        parse_recipe("asrr")
    with pytest.raises(LatpruneError, match="first step"):
        parse_recipe("bn+ridge")
    with pytest.raises(LatpruneError, match="at most one"):
        parse_recipe("ridge+two-stage")


def _write_images(folder, count, nested=False):
    rng = np.random.default_rng(0)
    for i in range(count):
        target = folder / (f"class{i % 2}" if nested else "") / f"img{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(target)


def test_calibration_reads_images_without_labels(tmp_path, monkeypatch):
    import torchvision.datasets

    flat, nested = tmp_path / "flat", tmp_path / "nested"
    _write_images(flat, 6)
    _write_images(nested, 6, nested=True)
    # Labels come from ImageFolder; calibration must work without it.
    monkeypatch.setattr(torchvision.datasets, "ImageFolder", None)
    for folder in (flat, nested):
        images = calibration_tensor(folder, "cifar", (1, 3, 32, 32), size=4)
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32


def test_empty_or_unreadable_calibration_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatpruneError, match="no calibration images"):
        calibration_tensor(tmp_path / "empty", "cifar", (1, 3, 32, 32))
    with pytest.raises(LatpruneError, match="not found"):
        calibration_tensor(tmp_path / "missing", "cifar", (1, 3, 32, 32))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(LatpruneError, match="cannot use image .*broken.jpg"):
        calibration_tensor(bad, "cifar", (1, 3, 32, 32))


def test_recovery_checks_its_inputs(resnet20, pruned20, calib):
    with pytest.raises(LatpruneError, match="shape"):
        recover(resnet20, pruned20, "bn", torch.randn(4, 3, 16, 16))
    with pytest.raises(LatpruneError, match="at least 2"):
        recover(resnet20, pruned20, "bn", calib[:1])
    other = load_model("cifar:resnet32")
    with pytest.raises(LatpruneError, match="made from cifar:resnet20"):
        recover(other, pruned20, "bn", calib)


def test_recover_uses_the_weights_a_user_factory_builds_when_they_hash_as_recorded(tmp_path, monkeypatch, capsys):
    """A factory that supplies its own (pre-trained) weights: no weights file to pass, the pruned file records
    the hash of the weights it built; a factory that later builds other weights is refused."""
    (tmp_path / "own_weights.py").write_text(
        "import torch\n\n"
        "SEED = 7\n\n"
        "def make():\n"
        "    torch.manual_seed(SEED)  # stands for weights a package ships\n"
        "    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),\n"
        "                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),\n"
        "                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))\n"
        "    net.input_shape = (1, 3, 32, 32)\n"
        "    return net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    images = tmp_path / "calib"
    _write_images(images, 8)
    spec, pruned_file = "own_weights:make", tmp_path / "p.pt"
    assert main(["prune", "--model", spec, "--uniform", "0.5", "--out", str(pruned_file)]) == 0
    assert set(load_pruned(pruned_file, spec).metadata["dense"]) == {"weights", "sha256", "factory_sha256"}
    recover_args = ["recover", "--model", spec, "--pruned", str(pruned_file), "--recovery", "bn", "--calib",
                    str(images), "--out", str(tmp_path / "r.pt"), "--force"]
    assert main(recover_args) == 0
    assert load_pruned(tmp_path / "r.pt", spec).metadata["recovery"]["recipe"] == "bn"
    sparse_file = tmp_path / "s.pt"  # sparsified in place: the hash recorded is the dense weights'
    assert main(["sparsify", "--model", spec, "--sparsity", "0.5", "--out", str(sparse_file)]) == 0
    assert main([*recover_args[:4], str(sparse_file), *recover_args[5:]]) == 0

    monkeypatch.setattr(sys.modules["own_weights"], "SEED", 8)  # the factory now builds other weights
    capsys.readouterr()
    assert main(recover_args) == 1
    assert "the factory own_weights:make gives weights other than the ones the pruned model was made from" in \
        capsys.readouterr().err
    weights = tmp_path / "w.pt"
    torch.save(load_model(spec).model.state_dict(), weights)  # SEED 8: other weights
    assert main([*recover_args, "--weights", str(weights)]) == 1
    assert f"--weights {weights} gives weights other than" in capsys.readouterr().err
    monkeypatch.setattr(sys.modules["own_weights"], "SEED", 7)
    torch.save(load_model(spec).model.state_dict(), weights)  # the weights it was made from, as a file
    assert main([*recover_args, "--weights", str(weights)]) == 0
    sys.modules.pop("own_weights", None)


def test_cli_prune_with_recovery_sparsify_and_recover(tmp_path, capsys):
    images = tmp_path / "calib"
    _write_images(images, 24)
    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(load_model("cifar:resnet20").model.state_dict(), weights)
    pruned_file = tmp_path / "p.pt"
    assert main(["prune", "--model", "cifar:resnet20", "--weights", str(weights), "--uniform", "0.5",
                 "--recovery", "ridge+bn", "--calib", str(images), "--out", str(pruned_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recovery"]["recipe"] == "ridge+bn" and result["recovery"]["calibration_images"] == 24
    assert load_pruned(pruned_file).metadata["recovery"]["steps"][0]["step"] == "ridge"

    sparse_file, recovered_file = tmp_path / "s.pt", tmp_path / "r.pt"
    assert main(["sparsify", "--model", "cifar:resnet20", "--weights", str(weights), "--sparsity", "0.8",
                 "--out", str(sparse_file)]) == 0
    assert main(["recover", "--pruned", str(sparse_file), "--model", "cifar:resnet20", "--weights", str(weights),
                 "--recovery", "asr", "--calib", str(images), "--calib-size", "16", "--out", str(recovered_file)]) == 0
    recovered = load_pruned(recovered_file)
    assert weight_sparsity(recovered.model) >= 0.8 - 1e-3
    assert recovered.metadata["recovery"]["calibration_images"] == 16
    capsys.readouterr()
    assert main(["prune", "--model", "cifar:resnet20", "--uniform", "0.5", "--recovery", "bn",
                 "--out", str(tmp_path / "x.pt")]) == 1
    assert "--calib DIR" in capsys.readouterr().err


class _PaddedInForward(nn.Conv2d):
    """A convolution that pads in its own forward ("same" padding built in, as EfficientNet-Lite's package)."""

    def forward(self, x):
        pad = self.kernel_size[0] // 2
        if self.stride[0] > 1:  # TensorFlow's "same" under a stride: one more pixel right and below
            return super().forward(F.pad(x, (pad - 1, pad, pad - 1, pad)))
        return super().forward(F.pad(x, (pad, pad, pad, pad)))


class _PaddedByChild(nn.Conv2d):
    """A convolution padding with a child module first (EfficientNet-Lite's package: ``static_padding``)."""

    def __init__(self, *args, pad=(1, 1, 1, 1), **kwargs):
        super().__init__(*args, **kwargs)
        self.static_padding = nn.ZeroPad2d(pad)

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class _ActivatedAfter(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


def test_ridge_refits_only_layers_whose_output_is_the_plain_convolution_of_their_rows():
    from latprune.recovery.ridge import _row_source

    assert _row_source(nn.Conv2d(4, 4, 3, padding=1)) and _row_source(nn.Linear(4, 2))
    assert _row_source(_PaddedInForward(4, 4, 3)) is None  # its input rows would miss the padding
    assert _row_source(_PaddedInForward(4, 4, 1))  # padded by nothing: the plain convolution
    assert _row_source(_PaddedInForward(4, 4, 3, stride=2)) is None  # padded on one side: even sizes show it
    same = _PaddedByChild(4, 4, 3, stride=2, pad=(0, 1, 0, 1))  # TensorFlow's "same" under a stride
    assert _row_source(same) is same.static_padding
    x = torch.randn(2, 4, 10, 10)
    assert same(x).shape != F.conv2d(x, same.weight, same.bias, 2).shape  # rows from its input would miss the padding
    assert _row_source(_ActivatedAfter(4, 4, 3, padding=1)) is None  # its child acts after the convolution


def test_ridge_refits_a_depthwise_convolution_that_pads_with_a_child_exactly():
    torch.manual_seed(0)
    from latprune.recovery.reconstruction import ReconstructionSettings
    from latprune.recovery.ridge import ridge_reconstruct
    from latprune.recovery.taps import Tap

    dense = nn.Sequential(_PaddedByChild(6, 6, 3, groups=6, pad=(1, 1, 1, 1)), nn.BatchNorm2d(6)).eval()
    with torch.no_grad():
        dense[1].running_mean.normal_()
        dense[1].running_var.uniform_(0.5, 2.0)
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        pruned[0].weight.normal_()  # a wrong kernel ridge must rebuild from 32 sampled positions per image
    calib = torch.randn(16, 6, 10, 10)
    summary = ridge_reconstruct(pruned, dense, [Tap("0", "1")], {}, calib, ReconstructionSettings(ridge=1e-9))
    assert summary == {"layers": 1, "skipped": 0}
    torch.testing.assert_close(pruned(calib), dense(calib), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("recipe", ["ridge", "ridge-tuned+bn"])
def test_recovery_for_scoring_leaves_out_only_what_keeps_the_outputs(resnet20, pruned20, calib, recipe):
    full, report = recover(resnet20, pruned20, recipe, calib)
    scored, lean = recover(resnet20, pruned20, recipe, calib, scoring=True)
    assert report.error_after is not None and lean.error_before is None and lean.error_after is None
    torch.testing.assert_close(_outputs(scored.model, calib), _outputs(full.model, calib), rtol=1e-4, atol=1e-4)
    if recipe == "ridge":  # its restatement left out: statistics of the pruned network, not the calibration moments
        stats = [m.running_var for m in scored.model.modules() if isinstance(m, nn.BatchNorm2d)]
        full_stats = [m.running_var for m in full.model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert not all(torch.allclose(a, b) for a, b in zip(stats, full_stats))


def test_grouped_ridge_solves_each_group_as_its_own_ridge():
    from latprune.recovery.ridge import _ridge_grouped, ridge_solution

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, 9, generator=generator, dtype=torch.float64)
    y = torch.einsum("ngi,goi->ngo", x, torch.randn(5, 2, 9, generator=generator, dtype=torch.float64)) + 3.0
    weight, shift = _ridge_grouped(x.transpose(0, 1), y.transpose(0, 1), 1e-3)
    assert weight.shape == (10, 9) and shift.shape == (10,)
    for g in range(5):
        w, b = ridge_solution(x[:, g], y[:, g], 1e-3)
        torch.testing.assert_close(weight[2 * g:2 * g + 2], w, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(shift[2 * g:2 * g + 2], b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel, stride, dilation, padding",
                         [(3, 1, 1, 1), (3, 2, 1, 0), (1, 1, 1, 0), ((3, 5), (2, 1), (1, 2), (1, 4))])
def test_ridge_rows_at_sampled_positions_are_the_unfolded_patches(kernel, stride, dilation, padding):
    from latprune.recovery.ridge import _patches_at

    layer = nn.Conv2d(3, 4, kernel, stride=stride, dilation=dilation, padding=padding)
    x = torch.randn(2, 3, 11, 13)
    unfolded = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    positions = torch.randperm(unfolded.shape[2], generator=torch.Generator().manual_seed(0))[:7]
    assert layer(x).shape[2] * layer(x).shape[3] == unfolded.shape[2]
    assert torch.equal(_patches_at(layer, x, positions), unfolded[:, :, positions])
