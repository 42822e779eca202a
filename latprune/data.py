"""Image data: ImageFolder datasets with each model family's standard preprocessing."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from latprune.errors import LatpruneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def family_transform(family: str, input_shape: tuple[int, ...]):
    """Eval preprocessing: resize + centre crop for ImageNet models, none for 32x32 CIFAR."""
    from torchvision import transforms

    height, width = input_shape[-2:]
    steps = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if family == "cifar":
        return transforms.Compose(steps)
    resize = transforms.Resize(int(round(min(height, width) / 0.875)))
    return transforms.Compose([resize, transforms.CenterCrop((height, width)), *steps])


def image_folder(path: str | os.PathLike, family: str, input_shape: tuple[int, ...]) -> Dataset:
    """An ``ImageFolder`` at ``path`` with the family's preprocessing, or a clear error."""
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise LatpruneError(f"data folder not found: {path}")
    try:
        dataset = ImageFolder(str(path), transform=family_transform(family, input_shape))
    except (FileNotFoundError, RuntimeError) as exc:
        raise LatpruneError(f"no images in {path} (expected <class>/<image> sub-folders): {exc}") from None
    return dataset


class UnlabeledImages(Dataset):
    """Images of a dataset without their labels: calibration must never see labels."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset[index][0]


def calibration_set(
    path: str | os.PathLike, family: str, input_shape: tuple[int, ...], size: int | None = None, seed: int = 0
) -> Dataset:
    """Up to ``size`` images from ``path``, chosen at random with ``seed``, without labels."""
    dataset = image_folder(path, family, input_shape)
    if size is not None and size < len(dataset):
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(dataset), generator=generator)[:size].tolist()
        dataset = Subset(dataset, indices)
    return UnlabeledImages(dataset)


def loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = False, workers: int | None = None) -> DataLoader:
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers)


def batches(dataset: Dataset, batch_size: int = 128) -> Iterator:
    yield from loader(dataset, batch_size=batch_size)


def evaluate_top1(model: nn.Module, dataset: Dataset, batch_size: int = 256, progress: bool = True) -> float:
    """Top-1 accuracy of ``model`` on a labelled dataset."""
    from tqdm import tqdm

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in tqdm(loader(dataset, batch_size), desc="eval", unit="batch", disable=not progress):
            correct += (model(images).argmax(dim=1) == labels).sum().item()
            total += labels.numel()
    if total == 0:
        raise LatpruneError("the evaluation dataset is empty")
    return correct / total


def calibration_tensor(
    path: str | os.PathLike, family: str, input_shape: tuple[int, ...], size: int | None = None, seed: int = 0
) -> torch.Tensor:
    """The calibration images of :func:`calibration_set` stacked into one tensor (labels never read)."""
    dataset = calibration_set(path, family, input_shape, size, seed)
    if len(dataset) == 0:
        raise LatpruneError(f"no calibration images in {path}")
    return torch.cat(list(batches(dataset, batch_size=256)))
