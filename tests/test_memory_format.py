"""Heavy passes run channels-last inside the block and leave the network's tensors as they were."""

import torch
import torch.nn as nn

from latprune.batching import forward_in_batches
from latprune.memory_format import channels_last, supports_channels_last
from latprune.models import load_model


class FlattensWithView(nn.Module):
    """A user's network whose classifier ``view``s a feature map: impossible on a channels-last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(y.view(y.size(0), -1))


def test_inside_the_block_the_weights_are_channels_last_and_afterwards_the_same_parameters_are_contiguous():
    torch.manual_seed(0)
    model = load_model("cifar:resnet20").model.eval()
    images = torch.randn(8, 3, 32, 32)
    conv = model.conv1.weight
    with torch.no_grad():
        plain = model(images)
    with torch.no_grad(), channels_last(model, example=images) as layout:
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        assert layout(images).is_contiguous(memory_format=torch.channels_last)
        converted = model(layout(images))
    assert model.conv1.weight is conv and conv.is_contiguous()
    assert all(p.is_contiguous() for p in model.parameters())
    assert torch.allclose(converted, plain, atol=1e-5)


def test_training_inside_the_block_keeps_the_optimiser_on_the_same_parameters():
    torch.manual_seed(0)
    model = load_model("cifar:resnet20").model.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.conv1.weight.detach().clone()
    images = torch.randn(4, 3, 32, 32)
    with channels_last(model, example=images) as layout:
        model(layout(images)).sum().backward()
        optimizer.step()
    assert not torch.equal(model.conv1.weight, before)
    assert model.conv1.weight.is_contiguous()


def test_a_network_that_views_a_feature_map_stays_in_its_own_format_and_still_runs():
    model = FlattensWithView().eval()
    images = torch.randn(5, 3, 8, 8)
    assert not supports_channels_last(model, images)
    with torch.no_grad(), channels_last(model, example=images) as layout:
        assert model.conv.weight.is_contiguous()
        assert layout(images) is images
        assert model(layout(images)).shape == (5, 10)
    assert forward_in_batches(model, images).shape == (5, 10)


def test_inputs_that_are_not_images_are_left_alone():
    model = nn.Sequential(nn.Linear(6, 3))
    vectors = torch.randn(4, 6)
    with channels_last(model, example=vectors) as layout:
        assert layout(vectors) is vectors
