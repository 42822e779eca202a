"""Forward passes over many images go in batches sized by the images."""

import torch

from latprune.batching import batch_size_for, forward_in_batches
from latprune.models import load_model


def test_large_images_get_small_batches_and_small_images_the_largest():
    assert batch_size_for((1, 3, 224, 224)) == 27
    assert batch_size_for((1, 3, 32, 32)) == 256
    assert batch_size_for((1, 3, 32, 32), most=128) == 128
    assert batch_size_for((1, 3, 4096, 4096)) == 1


def test_batched_outputs_equal_one_pass():
    torch.manual_seed(0)
    model = load_model("cifar:resnet20").model.eval()
    images = torch.randn(300, 3, 32, 32)  # two batches of at most 256
    with torch.no_grad():
        whole = model(images)
    assert torch.allclose(forward_in_batches(model, images), whole, atol=1e-5)
