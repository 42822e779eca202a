"""Over-parameterised fine-tuning: exact expansion and merge, SP-KD, the finetune/overparam recipes."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from conftest import CIFAR_TRAIN, shared_checkpoint
from latprune.cli import main
from latprune.data import calibration_tensor
from latprune.errors import LatpruneError
from latprune.groups import find_channel_groups
from latprune.models import load_model
from latprune.pruned_file import PrunedModel, load_pruned, prune_loaded
from latprune.recovery import FinetuneSettings, parse_recipe, recover
from latprune.recovery.finetune import finetune, similarity_loss, similarity_matrix, stage_outputs
from latprune.recovery.overparam import ExpandedConv2d, ExpandedLinear, expand_network, merge_network
from latprune.surgery import count_parameters


def _eval(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def _architecture(model: nn.Module) -> list[tuple]:
    return [(name, type(m).__name__, tuple(p.shape for p in m.parameters(recurse=False)))
            for name, m in model.named_modules()]


def test_expanded_network_equals_compact_at_initialisation(pruned20, calib):
    expanded = copy.deepcopy(pruned20.model)
    names = expand_network(expanded, expansion=2, seed=0)
    convs = [n for n, m in pruned20.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert names == convs
    assert isinstance(expanded.conv1, ExpandedConv2d) and isinstance(expanded.linear, ExpandedLinear)
    assert expanded.conv1.middle.out_channels == 2 * pruned20.model.conv1.out_channels
    assert (_eval(expanded, calib) - _eval(pruned20.model, calib)).abs().max() < 1e-5


def test_every_factor_of_an_expansion_gets_a_gradient_from_the_first_step():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    expanded = ExpandedConv2d(conv, 2, torch.Generator().manual_seed(0))
    expanded(torch.randn(2, 4, 8, 8)).pow(2).sum().backward()
    for name, param in expanded.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, name
    # the blocks that are zero at initialisation (the middle's top-right, the last's extra columns) move too
    assert expanded.middle.weight.grad[:6, 4:].abs().max() > 0
    assert expanded.last.weight.grad[:, 6:].abs().max() > 0


@pytest.mark.parametrize("layer", [nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True),
                                   nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", bias=False),
                                   nn.Linear(5, 3)], ids=["conv-stride-bias", "conv-reflect", "linear"])
def test_the_product_forward_is_the_chain_in_value_and_in_every_gradient(layer):
    """Training runs an expansion as one layer with the product weight: the same function of the same
    parameters as the three layers in a row, so the same gradients reach every factor."""
    torch.manual_seed(0)
    wrap = ExpandedConv2d if isinstance(layer, nn.Conv2d) else ExpandedLinear
    expanded = wrap(layer, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for param in expanded.parameters():  # trained factors, not the identity-like initialisation
            param.add_(0.1 * torch.randn_like(param))
    x = torch.randn(3, 4, 9, 9) if isinstance(layer, nn.Conv2d) else torch.randn(3, 5)
    target = torch.randn_like(expanded.last(expanded.middle(expanded.first(x))))

    def gradients(forward) -> tuple[torch.Tensor, list[torch.Tensor]]:
        expanded.zero_grad()
        out = forward(x)
        (out - target).pow(2).sum().backward()
        return out.detach(), [p.grad.clone() for p in expanded.parameters()]

    chain_out, chain_grads = gradients(lambda x: expanded.last(expanded.middle(expanded.first(x))))
    product_out, product_grads = gradients(expanded)
    assert torch.allclose(product_out, chain_out, atol=1e-5, rtol=1e-5)
    for got, want in zip(product_grads, chain_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_merged_network_equals_expanded_after_training_and_has_the_compact_architecture(pruned20, resnet20, calib):
    student = copy.deepcopy(pruned20.model)
    expand_network(student, expansion=2, seed=0)
    settings = FinetuneSettings(epochs=1, batch_size=32, lr=0.01)
    before = _eval(student, calib).clone()
    finetune(student, resnet20.model, calib, torch.randint(0, 10, (len(calib),)), settings,
             stage_outputs(resnet20.model, resnet20.example_input()))
    trained = _eval(student, calib)
    assert (trained - before).abs().max() > 1e-2  # training changed the function
    assert merge_network(student) == len([m for m in pruned20.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    assert (_eval(student, calib) - trained).abs().max() < 1e-4
    assert _architecture(student) == _architecture(pruned20.model)
    assert count_parameters(student) == count_parameters(pruned20.model)


def test_grouped_convolutions_stay_compact_and_biases_fold():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.Conv2d(8, 4, 1, stride=2, bias=True), nn.Flatten(), nn.Linear(64, 5))
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 3, 8, 8)
    reference = net(x).detach()
    assert expand_network(net, expansion=3) == ["0", "2", "4"]
    assert isinstance(net[1], nn.Conv2d)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trained = net(x).detach()
    assert (trained - reference).abs().max() > 1e-3
    merge_network(net)
    assert [type(m).__name__ for m in net] == ["Conv2d", "Conv2d", "Conv2d", "Flatten", "Linear"]
    assert net[0].bias is not None and net[2].stride == (2, 2)
    assert (net(x).detach() - trained).abs().max() < 1e-4
    with pytest.raises(ValueError, match="expansion"):
        expand_network(net, expansion=0)


def test_similarity_loss_matches_the_definition_and_ignores_width():
    a, b = torch.randn(5, 8, 4, 4), torch.randn(5, 3, 4, 4)
    flat = a.reshape(5, -1)
    gram = flat @ flat.T
    expected = gram / gram.norm(dim=1, keepdim=True)
    assert torch.allclose(similarity_matrix(a), expected, atol=1e-6)
    manual = (similarity_matrix(a) - similarity_matrix(b)).pow(2).sum() / 25
    assert torch.allclose(similarity_loss(b, a), manual)
    assert float(similarity_loss(a, 2.5 * a)) < 1e-10  # invariant to scale


def test_stage_outputs_are_the_ends_of_the_resolution_stages(resnet20):
    assert stage_outputs(resnet20.model, resnet20.example_input()) == ["layer1", "layer2", "layer3"]
    import torchvision

    assert stage_outputs(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64)) == [
        "relu", "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def real_resnet20():
    """The shared CIFAR resnet20 checkpoint, 96 real train images, and a pruned copy (a third of each group)."""
    if not CIFAR_TRAIN.is_dir():
        pytest.skip("../shared CIFAR-10 train images not present")
    loaded = load_model("cifar:resnet20", weights=str(shared_checkpoint("resnet20")))
    images = calibration_tensor(CIFAR_TRAIN, "cifar", loaded.input_shape, size=96)
    groups = find_channel_groups(loaded.model, loaded.example_input()).groups
    return loaded, images, prune_loaded(loaded, {g.id: list(range(0, g.width, 3)) for g in groups})


@pytest.mark.parametrize("method", ["finetune", "overparam"])
def test_finetune_recipes_move_a_pruned_network_toward_the_dense_one(real_resnet20, method):
    dense, images, pruned = real_resnet20
    dense_out = _eval(dense.model, images).log_softmax(1)

    def divergence(model):  # KL(dense || model) of the predicted class distributions
        return float(F.kl_div(_eval(model, images).log_softmax(1), dense_out, log_target=True, reduction="batchmean"))

    start = recover(dense, pruned, "bn", images)[0]
    tuned, report = recover(dense, start, method, images, tuning=FinetuneSettings(epochs=3, batch_size=32))
    assert divergence(tuned.model) < 0.7 * divergence(start.model)  # label-free: distils the dense model
    assert report.steps[0]["step"] == method and report.steps[0]["labels"] is False
    assert _architecture(tuned.model) == _architecture(pruned.model)
    if method == "overparam":
        assert report.steps[0]["sp_layers"] == ["layer1", "layer2", "layer3"]


def test_finetune_recipes_are_checked(resnet20, pruned20, calib):
    assert parse_recipe("two-stage+asr+overparam") == ["two-stage", "asr", "overparam"]
    with pytest.raises(LatpruneError, match="last step"):
        parse_recipe("finetune+bn")
    with pytest.raises(LatpruneError, match="at most one"):
        parse_recipe("finetune+overparam")
    with pytest.raises(LatpruneError, match="one label per image"):
        recover(resnet20, pruned20, "finetune", calib, labels=torch.zeros(3, dtype=torch.long))
    sparse = PrunedModel(copy.deepcopy(resnet20.model), resnet20.spec, resnet20.input_shape, {}, resnet20.family,
                         {"sparsity": 0.5})
    with pytest.raises(LatpruneError, match="sparse"):
        recover(resnet20, sparse, "overparam", calib)
    with pytest.raises(LatpruneError, match="epochs"):
        FinetuneSettings(epochs=0)


def test_cli_overparam_with_labelled_training_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(24):
        target = tmp_path / "train" / f"class{i % 3}" / f"img{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(target)
    out = tmp_path / "tuned.pt"
    assert main(["prune", "--model", "cifar:resnet20", "--uniform", "0.5", "--recovery", "overparam",
                 "--train", str(tmp_path / "train"), "--epochs", "1", "--batch-size", "8", "--lr", "0.001",
                 "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["recovery"]
    assert report["recipe"] == "overparam" and report["calibration_images"] == 24
    assert report["steps"][0]["labels"] is True and len(report["steps"][0]["loss"]) == 1
    assert report["steps"][0]["steps"] == report["steps"][0]["steps_planned"] == 3  # 24 images, batches of 8
    assert report["steps"][0]["time_box_s"] == 600  # --recovery-seconds' default boxes fine-tuning too
    tuned = load_pruned(out)
    assert not any(isinstance(m, (ExpandedConv2d, ExpandedLinear)) for m in tuned.model.modules())
    assert main(["prune", "--model", "cifar:resnet20", "--uniform", "0.5", "--recovery", "bn",
                 "--train", str(tmp_path / "train"), "--out", str(out)]) == 1
    assert "--train (labelled images) is read by the fine-tuning methods" in capsys.readouterr().err


def test_a_time_box_plans_the_steps_that_fit_and_decays_the_rate_over_them(pruned20, resnet20, calib,
                                                                           monkeypatch):
    rates = []
    step = torch.optim.SGD.step

    def recording(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    student = copy.deepcopy(pruned20.model)
    boxed = FinetuneSettings(epochs=3, batch_size=8, lr=0.01, seconds=1e-6)  # over after the first step
    steps = finetune(student, resnet20.model, calib, None, boxed)
    assert (steps.done, steps.planned) == (1, 3 * len(calib) // 8) and len(steps.losses) == 1
    assert rates == [0.01]
    rates.clear()
    steps = finetune(copy.deepcopy(pruned20.model), resnet20.model, calib, None,
                     FinetuneSettings(epochs=2, batch_size=8, lr=0.01))
    assert steps.done == steps.planned == 2 * len(calib) // 8 == len(rates)
    assert rates[0] == 0.01 and rates[-1] < 0.01 * 0.05 and rates == sorted(rates, reverse=True)
    with pytest.raises(LatpruneError, match="seconds"):
        FinetuneSettings(seconds=0)
