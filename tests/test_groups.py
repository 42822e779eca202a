"""Channel groups match the known coupling structure of real architectures."""

import pytest
import torch

from latprune.errors import LatpruneError
from latprune.groups import ChannelGroup, find_channel_groups
from latprune.models import load_model


def analyse(spec, shape=None):
    loaded = load_model(spec, input_shape=shape)
    return find_channel_groups(loaded.model, loaded.example_input())


def test_cifar_resnet_prunes_inner_block_channels_and_residual_streams():
    analysis = analyse("cifar:resnet20")
    inner = [g for g in analysis.groups if g.id.endswith(".conv1")]
    assert [g.id for g in inner] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    for group in inner:
        block = group.id.rsplit(".", 1)[0]
        assert set(group.producers) == {f"{block}.conv1", f"{block}.bn1"}
        assert group.consumers == (f"{block}.conv2",)
    streams = [g.id for g in analysis.groups if g not in inner]
    assert streams == ["conv1", "layer2.0.conv2", "layer3.0.conv2"]  # through the option-A pad shortcuts
    assert {e.id: e.reason for e in analysis.excluded} == {"linear": "sets the network's output"}


def test_a_channel_pad_inside_a_layers_forward_excludes_its_groups():
    class InlinePad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)

        def forward(self, x):
            x = self.stem(x)
            return self.conv(x) + torch.nn.functional.pad(x, (0, 0, 0, 0, 2, 2))  # no submodule to wrap

    model = InlinePad()
    analysis = find_channel_groups(model, torch.randn(1, 3, 8, 8))
    assert not analysis.groups  # the pad couples the stem's channels to the sum's, which removal breaks
    assert [e.id for e in analysis.excluded] == ["conv"]
    assert "breaks the forward pass" in analysis.excluded[0].reason


def test_resnet18_couples_each_stage_across_its_residual_adds():
    analysis = analyse("torchvision:resnet18", (1, 3, 64, 64))
    assert len(analysis.groups) == 12  # 8 inner block groups + 4 residual stages
    residual = next(g for g in analysis.groups if "layer1.0.conv1" in g.consumers and "conv1" in g.producers)
    assert {"bn1", "layer1.0.bn2", "layer1.1.bn2"} <= set(residual.producers)
    assert {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"} <= set(residual.consumers)
    assert residual.width == 64
    assert [e.id for e in analysis.excluded] == ["fc"]


def test_depthwise_convs_share_a_group_with_their_expansion():
    analysis = analyse("torchvision:mobilenet_v2", (1, 3, 64, 64))
    expansion = next(g for g in analysis.groups if "features.2.conv.0.0" in g.producers)  # 1x1 expansion
    assert "features.2.conv.1.0" in expansion.producers  # the depthwise conv
    assert expansion.consumers == ("features.2.conv.2",)  # the 1x1 projection
    assert expansion.width == 96
    assert expansion.divisor == 1


def test_grouped_convs_constrain_widths_to_whole_slices():
    analysis = analyse("torchvision:regnet_x_400mf", (1, 3, 64, 64))
    group = next(g for g in analysis.groups if g.id == "trunk_output.block1.block1-0.f.a.0")
    assert group.width == 32 and group.divisor == 2  # feeds a conv with groups=2
    assert group.candidate_widths() == list(range(2, 33, 2))
    assert group.slice_pattern([0, 3]) == [0, 3, 16, 19]
    with pytest.raises(LatpruneError, match="same kept offsets"):
        group.validate_kept([0, 3, 16, 18])
    with pytest.raises(LatpruneError, match="multiple of 2"):
        group.validate_kept([0, 1, 16])


def test_densenet_groups_cross_concatenations():
    analysis = analyse("torchvision:densenet121", (1, 3, 64, 64))
    layer = next(g for g in analysis.groups if g.id == "features.denseblock1.denselayer1.conv2")
    assert layer.width == 32
    # its 32 new features are read by every later layer of the block through the concatenation
    assert {f"features.denseblock1.denselayer{i}.conv1" for i in range(2, 7)} <= set(layer.consumers)


def test_flops_shares_are_fractions_and_cover_the_network():
    analysis = analyse("torchvision:resnet50", (1, 3, 64, 64))
    shares = [g.flops_share for g in analysis.groups]
    assert all(0 < s <= 1 for s in shares)
    assert analysis.total_macs > 0
    assert max(shares) < 1


def test_group_json_round_trip():
    group = analyse("cifar:resnet20").groups[0]
    assert ChannelGroup.from_json(group.to_json()) == group


def test_model_that_fails_on_its_input_is_a_clear_error():
    loaded = load_model("cifar:resnet20", input_shape=(1, 1, 32, 32))
    with pytest.raises(LatpruneError, match="model failed on an input of shape"):
        find_channel_groups(loaded.model, loaded.example_input())


def test_model_returning_a_tuple_is_refused():
    loaded = load_model("fixtures.user_models:returns_a_tuple")
    with pytest.raises(LatpruneError, match="returns tuple"):
        find_channel_groups(loaded.model, torch.zeros(1, 3, 8, 8))
