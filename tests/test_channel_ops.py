"""Groups reach through parameter-free channel ops (pads, slices), rebuilt as index maps when pruned."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import random_kept, shared_checkpoint
from fixtures.user_models import LambdaLayer
from latprune.analysis import analyse
from latprune.channel_ops import ChannelMap, opaque_channel_maps, wrap_channel_ops
from latprune.channels import masked_channels
from latprune.errors import LatpruneError
from latprune.models import load_model
from latprune.pipeline import HOLD_CHANNEL_OPS, PlanSettings, held_groups, uniform
from latprune.onnx_export import export_onnx, run_onnx
from latprune.pruned_file import load_pruned, prune_loaded, save_pruned

TOYS = ["fixtures.user_models:channel_pad_net", "fixtures.user_models:channel_slice_net"]


class Pad(nn.Module):
    def __init__(self, before: int, after: int):
        super().__init__()
        self.before, self.after = before, after

    def forward(self, x):
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))


def masked_output(analysis, kept, x):
    """The dense network with every removed channel zeroed at each of its producers (maps included)."""
    removed = {g.id: [i for i in range(g.width) if i not in set(kept[g.id])] for g in analysis.groups}
    with torch.no_grad(), masked_channels(analysis.model, analysis.layout, removed):
        return analysis.model(x)


def check_pruned_like_masked(analysis, kept, tmp_path, x, tolerance):
    """Pruned == masked dense; ONNX (opset 17) == PyTorch; save -> load exact. Returns the pruned model."""
    pruned = prune_loaded(analysis, kept)
    with torch.no_grad():
        out = pruned.model(x)
    expected = masked_output(analysis, kept, x)
    scale = max(expected.abs().max().item(), 1.0)
    assert (out - expected).abs().max().item() <= 1e-5 * scale

    onnx_path = export_onnx(pruned.model, tuple(x.shape), tmp_path / "pruned.onnx", opset=17)
    assert abs(run_onnx(onnx_path, x) - out.numpy()).max() < tolerance(out)

    save_pruned(pruned, tmp_path / "pruned.pt")
    reloaded = load_pruned(tmp_path / "pruned.pt", spec=analysis.spec)  # a module:callable spec must be named
    assert str(reloaded.model) == str(pruned.model)
    for a, b in zip(pruned.model.modules(), reloaded.model.modules()):
        if isinstance(a, ChannelMap):
            assert torch.equal(a.in_index, b.in_index) and torch.equal(a.out_index, b.out_index)
    with torch.no_grad():
        assert torch.equal(reloaded.model(x), out)
    return pruned


@pytest.mark.parametrize("name,blocks", [("resnet20", 3), ("resnet56", 9)])
def test_cifar_resnet_residual_streams_are_prunable_through_the_pad_shortcut(name, blocks):
    analysis = analyse(load_model(f"cifar:{name}"))
    assert [op.module for op in analysis.channel_ops] == ["layer2.0.shortcut", "layer3.0.shortcut"]
    assert all(op.description == "pad on channels" for op in analysis.channel_ops)
    assert len(analysis.groups) == 3 * blocks + 3
    streams = {g.id: g for g in analysis.groups if g.crosses}
    assert set(streams) == {"conv1", "layer2.0.conv2", "layer3.0.conv2"}
    assert streams["conv1"].width == 16 and streams["layer3.0.conv2"].width == 64
    assert streams["conv1"].crosses == ("layer2.0.shortcut (pad on channels, input side)",)
    assert streams["layer2.0.conv2"].crosses == ("layer2.0.shortcut (pad on channels, output side)",
                                                 "layer3.0.shortcut (pad on channels, input side)")
    assert {f"layer1.{b}.bn2" for b in range(blocks)} <= set(streams["conv1"].producers)
    assert "linear" in streams["layer3.0.conv2"].consumers
    assert [e.id for e in analysis.excluded] == ["linear"]


def test_trained_resnet20_pruned_through_the_shortcuts_matches_masked_onnx_and_reload(tmp_path, calib):
    loaded = load_model("cifar:resnet20", weights=shared_checkpoint("resnet20"))
    analysis = analyse(loaded)
    kept = random_kept(analysis.groups, seed=5, low=0.3, high=0.8)
    pruned = check_pruned_like_masked(analysis, kept, tmp_path, calib[:8], lambda out: 1e-4)
    shortcut = pruned.model.layer2[0].shortcut
    assert shortcut.in_width == len(kept["conv1"]) and shortcut.out_width == len(kept["layer2.0.conv2"])
    assert pruned.model.conv1.out_channels == len(kept["conv1"])


@pytest.mark.parametrize("spec", TOYS, ids=["pad", "slice"])
def test_user_models_with_a_channel_pad_or_slice_behave_like_cifar_resnets(spec, tmp_path):
    analysis = analyse(load_model(spec))
    assert [op.module for op in analysis.channel_ops] == ["shortcut"]
    assert {g.id for g in analysis.groups} == {"stem.0", "conv1", "conv2"}
    by_id = analysis.by_id()
    assert by_id["stem.0"].crosses == (f"shortcut ({analysis.channel_ops[0].description}, input side)",)
    assert by_id["conv2"].crosses == (f"shortcut ({analysis.channel_ops[0].description}, output side)",)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    kept = random_kept(analysis.groups, seed=3, low=0.3, high=0.7)
    check_pruned_like_masked(analysis, kept, tmp_path, x, lambda out: 1e-4 * max(out.abs().max().item(), 1.0))


def test_the_ops_are_named_from_the_traced_graph():
    pad = analyse(load_model(TOYS[0])).channel_ops[0]
    slice_ = analyse(load_model(TOYS[1])).channel_ops[0]
    assert pad.description == "pad on channels" and pad.source == (-1,) * 4 + tuple(range(8)) + (-1,) * 4
    assert slice_.description == "channel slice" and slice_.source == tuple(range(8))


def test_an_op_that_mixes_channels_is_not_a_map_and_its_groups_stay_excluded():
    analysis = analyse(load_model("fixtures.user_models:channel_mix_net"))
    assert analysis.channel_ops == ()
    assert {g.id for g in analysis.groups} == {"conv1"}
    assert "stem.0" in {e.id for e in analysis.excluded}


@pytest.mark.parametrize("fn", [lambda x: 2 * x[:, :2], lambda x: x[:, :2] + 1, lambda x: torch.relu(x[:, :2])],
                         ids=["scaled", "offset", "relu"])
def test_a_parameter_free_op_that_changes_values_is_no_channel_map(fn):
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.op = LambdaLayer(fn)

        def forward(self, x):
            return self.op(self.conv(x))

    model = Head()
    assert wrap_channel_ops(model, torch.randn(1, 3, 4, 4)) == ()
    assert isinstance(model.op, LambdaLayer)


def test_a_channel_op_module_called_twice_is_left_alone():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.pad = Pad(2, 2)

        def forward(self, x):
            return self.pad(self.pad(self.conv(x)))

    model = Twice()
    assert wrap_channel_ops(model, torch.randn(1, 3, 4, 4)) == ()
    assert isinstance(model.pad, Pad)


def test_the_index_map_places_kept_inputs_and_returns_kept_outputs():
    mapped = ChannelMap(Pad(2, 1), in_channels=4, out_channels=7, description="pad on channels")
    x = torch.arange(1.0, 5.0).reshape(1, 4, 1, 1)
    assert mapped(x).flatten().tolist() == [0, 0, 1, 2, 3, 4, 0]
    mapped.remove_inputs([1])  # input channel 1 (value 2) is gone: the op reads zero there
    mapped.remove_outputs([0, 6])
    narrow = torch.tensor([1.0, 3.0, 4.0]).reshape(1, 3, 1, 1)
    assert mapped(narrow).flatten().tolist() == [0, 1, 0, 3, 4]
    mapped.remove_outputs([2])  # positions are the current ones: drops the output that read input 1
    assert mapped(narrow).flatten().tolist() == [0, 1, 3, 4]
    assert (mapped.in_width, mapped.out_width) == (3, 4)


def test_wrapping_keeps_the_function_and_the_state_dict():
    loaded = load_model("cifar:resnet20")
    x = loaded.example_input()
    keys = list(loaded.model.state_dict())
    with torch.no_grad():
        before = loaded.model(x)
    ops = wrap_channel_ops(loaded.model, x)
    assert len(ops) == 2 and isinstance(loaded.model.layer2[0].shortcut, ChannelMap)
    assert list(loaded.model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(loaded.model(x), before)
    again = wrap_channel_ops(loaded.model, x)  # idempotent: the maps are reported again, not wrapped twice
    assert [(op.module, op.source) for op in again] == [(op.module, op.source) for op in ops]
    assert not isinstance(loaded.model.layer2[0].shortcut.op, ChannelMap)


def test_gradients_through_a_pruned_map_are_the_same_traced_or_not():
    mapped = ChannelMap(Pad(1, 1), in_channels=3, out_channels=5, description="pad on channels")
    mapped.remove_inputs([0])
    mapped.remove_outputs([4])
    x = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    weight = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    grads = []
    for opaque in (False, True):
        leaf = x.clone().requires_grad_()
        if opaque:
            with opaque_channel_maps():
                y = mapped(leaf)
        else:
            y = mapped(leaf)
        (y * weight).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])
    # kept inputs are the original 1 and 2, which the pad puts at outputs 2 and 3
    assert torch.equal(grads[0], weight[:, 2:4])


def test_hold_channel_ops_keeps_the_groups_crossing_them_at_full_width():
    analysis = analyse(load_model("cifar:resnet20"))
    streams = {"conv1", "layer2.0.conv2", "layer3.0.conv2"}
    assert held_groups([HOLD_CHANNEL_OPS], analysis.groups) == streams
    assert held_groups(["layer1.0.conv1"], analysis.groups) == {"layer1.0.conv1"}
    widths = uniform(analysis, 0.5, PlanSettings(hold=(HOLD_CHANNEL_OPS,))).widths()
    assert all(widths[g.id] == g.width for g in analysis.groups if g.id in streams)
    assert all(widths[g.id] == g.width // 2 for g in analysis.groups if g.id not in streams)
    with pytest.raises(LatpruneError, match="unknown group 'layer9'"):
        held_groups(["layer9"], analysis.groups)
