import copy

import pytest
import torch
import torch.nn as nn

from latprune.recovery import recover
from latprune.recovery.output_layer import output_layer, refit_output_layer
from latprune.recovery.reconstruction import ReconstructionSettings


@pytest.fixture(scope="module")
def images():
    return torch.randn(400, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_a_rescaled_classifier_is_refitted_to_the_dense_outputs(resnet20, images):
    dense = resnet20.model.eval()
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        pruned.linear.weight.mul_(0.5)
        pruned.linear.bias.add_(0.3)
    refit = refit_output_layer(pruned, dense, images, ridge=1e-6)
    assert refit.layer == "linear" and refit.applied and refit.reason == ""
    assert refit.error_before > 0.05 and refit.error_after < 1e-6
    expected = _outputs(dense, images[:16])
    torch.testing.assert_close(_outputs(pruned, images[:16]), expected, rtol=1e-3, atol=1e-3 * expected.abs().max())


def test_a_fit_no_better_on_the_held_out_images_leaves_the_layer(resnet20, images):
    dense = resnet20.model.eval()
    pruned = copy.deepcopy(dense)  # already exact: a ridge fit can only be as good
    refit = refit_output_layer(pruned, dense, images, ridge=1e-3)
    assert not refit.applied and refit.reason == "no better on the held-out images"
    assert refit.error_after >= refit.error_before
    assert torch.equal(pruned.linear.weight, dense.linear.weight) and torch.equal(pruned.linear.bias, dense.linear.bias)


def test_too_few_images_for_the_layers_inputs_leave_it(resnet20, images):
    dense = resnet20.model.eval()
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        pruned.linear.weight.mul_(0.5)
    weight = pruned.linear.weight.clone()
    refit = refit_output_layer(pruned, dense, images[:100], ridge=1e-3)  # 75 fitted for 64 inputs and a shift
    assert not refit.applied and refit.reason == "75 calibration images are too few to fit its 64 inputs"
    assert torch.equal(pruned.linear.weight, weight)


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return 2 * self.head(torch.relu(self.body(x)))


def test_the_output_layer_is_the_linear_layer_whose_output_is_returned():
    x = torch.randn(2, 6)
    assert output_layer(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), x) == "2"
    assert output_layer(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Softmax(1)), x) is None
    assert output_layer(_Scaled(), x) is None
    no_bias = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    refit = refit_output_layer(no_bias, copy.deepcopy(no_bias), torch.randn(100, 6), ridge=1e-3)
    assert not refit.applied and refit.reason == "the layer has no bias to take the fitted shift"


def test_two_stage_ends_by_refitting_the_output_layer_unless_told_not_to(resnet20, pruned20, images):
    settings = ReconstructionSettings(phase1_epochs=1, phase2_epochs=1, batch_size=100)
    _, report = recover(resnet20, pruned20, "two-stage", images[:200], settings)  # 150 fitted for 64 inputs
    refit = report.steps[0]["output_layer"]
    assert refit["layer"] == "linear"
    assert refit["applied"] == (refit["error_after"] < refit["error_before"])
    settings.refit_output = False
    _, report = recover(resnet20, pruned20, "ridge-tuned", images[:200], settings)
    assert "output_layer" not in report.steps[0] and "phase2" in report.steps[0]


def test_recover_says_what_the_refit_did():
    from latprune.cli.plan_commands import _format_recovered

    steps = [{"step": "two-stage", "seconds": 80.0,
              "output_layer": {"layer": "linear", "applied": True, "reason": "", "error_before": 0.312,
                               "error_after": 0.112}}]
    report = {"recipe": "two-stage", "calibration_images": 1024, "steps": steps, "error_before": 2.0,
              "error_after": 0.5}
    text = _format_recovered({"out": "r.pt", "recovery": report})
    assert text.splitlines()[-1] == ("output layer linear refitted to the dense outputs: error on held-out "
                                     "calibration images 0.312 -> 0.112")
    steps[0]["output_layer"] = {"layer": "_fc", "applied": False,
                                "reason": "750 calibration images are too few to fit its 1280 inputs"}
    assert _format_recovered({"out": "r.pt", "recovery": report}).splitlines()[-1] == (
        "output layer _fc left as it was: 750 calibration images are too few to fit its 1280 inputs")
    steps[0]["output_layer"] = {"layer": None, "applied": False, "reason": "the network's output is not a linear "
                                "layer's"}
    assert _format_recovered({"out": "r.pt", "recovery": report}).splitlines()[-1] == (
        "output layer left as it was: the network's output is not a linear layer's")
