"""Image data: ImageFolder datasets with each model's preprocessing (:mod:`latprune.preprocessing`)."""

from __future__ import annotations

import os
from contextlib import ExitStack

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from latprune.errors import LatpruneError
from latprune.memory_format import channels_last
from latprune.preprocessing import Preprocessing, as_preprocessing



class _CheckSize:
    """A transform step that refuses an image of another size where none is resized (a batch of mixed sizes
    would fail later with no file named)."""

    def __init__(self, size: tuple[int, int]):
        self.size = size

    def __call__(self, image):
        width, height = image.size
        if (height, width) != self.size:
            raise ValueError(f"it is {height}x{width}; the model takes {self.size[0]}x{self.size[1]} images as they "
                             f"are (no resizing for this model)")
        return image


def model_transform(preprocessing: Preprocessing | str, input_shape: tuple[int, ...]):
    """The eval preprocessing of a model (or of a family's default): resize + centre crop and normalisation, or
    normalisation only where images are taken as they are (their size checked)."""
    preprocessing = as_preprocessing(preprocessing)
    size = preprocessing.exact_size(input_shape)
    return preprocessing.transform(input_shape, before=[_CheckSize(size)] if size is not None else [])


def image_folder(path: str | os.PathLike, preprocessing: Preprocessing | str, input_shape: tuple[int, ...]
                 ) -> Dataset:
    """An ``ImageFolder`` at ``path`` with the model's preprocessing (or a family's default), or a clear error."""
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise LatpruneError(f"data folder not found: {path}")
    try:
        dataset = ImageFolder(str(path), transform=model_transform(preprocessing, input_shape))
    except (FileNotFoundError, RuntimeError) as exc:
        raise LatpruneError(f"no images in {path} (expected <class>/<image> sub-folders): {exc}") from None
    return dataset


def check_image_folder(path: str | os.PathLike, preprocessing: Preprocessing | str, input_shape: tuple[int, ...],
                       progress: bool = True) -> Dataset:
    """:func:`image_folder`, with every image decoded once and, where images are not resized, its size checked:
    a truncated, unreadable or wrongly sized file is one error naming it, before any slow work (and before the
    loader's worker processes, which would report it as a traceback)."""
    from tqdm import tqdm

    dataset = image_folder(path, preprocessing, input_shape)
    size = as_preprocessing(preprocessing).exact_size(input_shape)
    check = _CheckSize(size) if size is not None else None
    bar = tqdm(dataset.samples, desc="check images", unit="image", leave=False,
               disable=True if not progress else None)  # None: no bar where stderr is no terminal
    for file, _ in bar:
        _open_checked(file, check)
    return dataset


def _open_checked(file: str, check: _CheckSize | None = None):
    """The image at ``file`` decoded in full (RGB), or a one-line error naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image = image.convert("RGB")  # decodes every pixel: a truncated file fails here
        return check(image) if check is not None else image
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise LatpruneError(f"cannot use image {file}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from None


class UnlabeledFolder(Dataset):
    """Every image file under a folder (any nesting, class sub-folders or none), without labels.

    Calibration reads images through this class only, so it cannot see labels: folder
    names are never interpreted.
    """

    def __init__(self, path: str | os.PathLike, transform):
        from torchvision.datasets.folder import IMG_EXTENSIONS

        if not os.path.isdir(path):
            raise LatpruneError(f"calibration folder not found: {path}")
        self.files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(path, followlinks=True)
            for name in names
            if name.lower().endswith(IMG_EXTENSIONS)
        )
        if not self.files:
            raise LatpruneError(f"no calibration images in {path} (looked for {', '.join(IMG_EXTENSIONS)} files)")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        image = _open_checked(path)
        try:
            return self.transform(image)
        except ValueError as exc:
            raise LatpruneError(f"cannot use calibration image {path}: {str(exc).splitlines()[0]}") from None


def calibration_set(path: str | os.PathLike, preprocessing: Preprocessing | str, input_shape: tuple[int, ...],
                    size: int | None = None, seed: int = 0) -> Dataset:
    """Up to ``size`` images from ``path``, chosen at random with ``seed``, without labels."""
    return random_subset(UnlabeledFolder(path, model_transform(preprocessing, input_shape)), size, seed)


def random_subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """Up to ``size`` items of ``dataset`` in an order drawn with ``seed`` (all of them, in order, when ``size`` is
    None). Shuffled even when ``size`` takes them all, so that any first part of them (recovery's, ahead of the
    planner's extra images) is a random draw, not the folder's first classes; and the first ``n`` of a larger
    ``size`` are the ``n`` a smaller one draws."""
    if size is None:
        return dataset
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size].tolist()
    return Subset(dataset, indices)


def loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = False, workers: int | None = None) -> DataLoader:
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers)


def evaluate_top1(model: nn.Module, dataset: Dataset, batch_size: int = 256, progress: bool = True) -> float:
    """Top-1 accuracy of ``model`` on a labelled dataset (:func:`latprune.pipeline.evaluate` sizes the batches
    by the model's input)."""
    from tqdm import tqdm

    model.eval()
    correct = total = 0
    with torch.no_grad(), ExitStack() as formats:
        layout = None
        for images, labels in tqdm(loader(dataset, batch_size), desc="eval", unit="batch", disable=not progress):
            layout = layout or formats.enter_context(channels_last(model, example=images))
            correct += (model(layout(images)).argmax(dim=1) == labels).sum().item()
            total += labels.numel()
    if total == 0:
        raise LatpruneError("the evaluation dataset is empty")
    return correct / total


def labelled_tensors(path: str | os.PathLike, preprocessing: Preprocessing | str, input_shape: tuple[int, ...],
                     size: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``size`` images (chosen with ``seed``) and their class indices from an ImageFolder."""
    if size is not None and size < 1:
        raise LatpruneError(f"the number of training images must be at least 1, got {size}")
    dataset = random_subset(check_image_folder(path, preprocessing, input_shape, progress=False), size, seed)
    images, labels = zip(*DataLoader(dataset, batch_size=256, num_workers=0))
    return torch.cat(images), torch.cat(labels)


def calibration_tensor(path: str | os.PathLike, preprocessing: Preprocessing | str, input_shape: tuple[int, ...],
                       size: int | None = None, seed: int = 0) -> torch.Tensor:
    """The calibration images of :func:`calibration_set` stacked into one tensor (labels never read)."""
    if size is not None and size < 1:
        raise LatpruneError(f"the calibration size must be at least 1, got {size}")
    dataset = calibration_set(path, preprocessing, input_shape, size, seed)
    # Worker processes re-raise a LatpruneError as a generic one; read in-process to keep the message.
    return torch.cat(list(DataLoader(dataset, batch_size=256, num_workers=0)))
