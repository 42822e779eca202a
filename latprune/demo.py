"""The built-in accuracy demonstration: scikit-learn's handwritten digits and a small CNN.

Nothing is downloaded: the 1,797 8x8 digit images ship inside scikit-learn. They are
written out as ordinary image folders (``train/<class>/*.png``, ``test/<class>/*.png``,
32x32 RGB), so the demo reads them through the same loaders as a user's data, and the
CNN is trained on them in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DIGITS_SPEC = "latprune.demo:digits_cnn"
INPUT_SHAPE = (1, 3, 32, 32)


class DigitsCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU layers (two with stride 2), global pooling and a classifier."""

    input_shape = INPUT_SHAPE

    def __init__(self, widths: tuple[int, int, int, int] = (32, 64, 64, 128), classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(cin, width, 3, stride=2 if i % 2 else 1, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def digits_cnn() -> DigitsCNN:
    """Model factory for the spec ``latprune.demo:digits_cnn``."""
    return DigitsCNN()


def write_digits(folder: str | os.PathLike, test_fraction: float = 0.25, seed: int = 0) -> tuple[Path, Path]:
    """Write the digits as PNG image folders under ``folder``; returns (train, test). Reuses a complete copy."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(folder)
    train, test = root / "train", root / "test"
    done = root / ".complete"
    if done.exists():
        return train, test
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    test_count = int(round(test_fraction * len(order)))
    for rank, index in enumerate(order):
        split = test if rank < test_count else train
        target = split / str(digits.target[index]) / f"{index:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)  # values 0..16
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).convert("RGB").save(target)
    done.write_text("ok\n")
    return train, test


def train_digits_cnn(train_folder: str | os.PathLike, out_weights: str | os.PathLike, epochs: int = 8,
                     seed: int = 0, progress: bool = True) -> dict:
    """Train :class:`DigitsCNN` on an image folder (Adam, flips off: digits are not mirror-symmetric)."""
    from tqdm import tqdm

    from latprune.data import labelled_tensors

    torch.manual_seed(seed)
    images, labels = labelled_tensors(train_folder, "custom", INPUT_SHAPE)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in tqdm(range(epochs), desc="train digits CNN", unit="epoch", disable=not progress, leave=False):
        total = 0.0
        for order in torch.randperm(len(images), generator=generator).split(64):
            loss = F.cross_entropy(model(images[order]), labels[order])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(order)
        scheduler.step()
        losses.append(total / len(images))
    model.eval()
    torch.save(model.state_dict(), out_weights)
    return {"epochs": epochs, "train_images": len(images), "loss": [round(v, 4) for v in losses]}
