import random
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR_TEST = SHARED / "data" / "cifar10-jpeg" / "test"
CIFAR_TRAIN = SHARED / "data" / "cifar10-jpeg" / "train"
CIFAR_MODELS = SHARED / "models" / "cifar10"


def shared_checkpoint(name: str) -> Path:
    """Path of a shared CIFAR checkpoint, skipping the test where ../shared is absent."""
    matches = sorted(CIFAR_MODELS.glob(f"{name}-*.th"))
    if not matches:
        pytest.skip(f"../shared checkpoint for {name} not present")
    return matches[0]


@pytest.fixture
def cifar_test_dir() -> Path:
    if not CIFAR_TEST.is_dir():
        pytest.skip("../shared CIFAR-10 test images not present")
    return CIFAR_TEST


def random_kept(groups, seed: int, low: float = 0.3, high: float = 1.0) -> dict[str, list[int]]:
    """Random kept channels per group: a width of low..high of each group, legal for its divisor."""
    rng = random.Random(seed)
    kept = {}
    for group in groups:
        per_slice = group.width // group.divisor
        count = max(1, round(per_slice * rng.uniform(low, high)))
        kept[group.id] = group.slice_pattern(sorted(rng.sample(range(per_slice), count)))
    return kept


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    random.seed(0)
