"""The images one run trains, validates and is tested on: its data set's splits cut by the run's options
(class-balanced subsets, a held-out or k-fold validation split, the fixed test subset), on the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from minimascope import data, datasets, io
from minimascope.config import TrainConfig


@dataclass
class Splits:
    """The uint8 images and labels of each split, on the training device, and what the data set is."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]
    test_index: torch.Tensor  # indices of the test images into the data set's test split
    normalization: data.Normalization  # the data set's, with the run's std_multiplier
    dataset: dict[str, Any]  # ImageData.describe(): name, classes, channels, image size, mean, std
    flip: bool  # whether augmentation flips (not for digits)


def make_splits(config: TrainConfig, device: torch.device, *, progress: data.Progress | None = None) -> Splits:
    loaded = data.load(config.dataset, config.data, progress=progress)
    train_index = torch.arange(len(loaded.train_labels))
    if config.train_subset is not None:
        train_index = data.balanced_subset(loaded.train_labels, config.train_subset, config.data_seed)
    val_index = None
    labels = loaded.train_labels[train_index]
    if config.folds is not None:
        kept, held = data.kfold_split(labels, config.folds, config.fold, config.data_seed)
        train_index, val_index = train_index[kept], train_index[held]
    elif config.val_size:
        kept, held = data.stratified_split(labels, config.val_size, config.data_seed)
        train_index, val_index = train_index[kept], train_index[held]
    test_index = torch.arange(len(loaded.test_labels))
    if config.test_subset is not None:
        test_index = data.balanced_subset(loaded.test_labels, config.test_subset, data.TEST_SUBSET_SEED)

    def on_device(images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor):
        return images[index].to(device), labels[index].to(device)

    return Splits(
        train=on_device(loaded.train_images, loaded.train_labels, train_index),
        val=on_device(loaded.train_images, loaded.train_labels, val_index) if val_index is not None else None,
        test=on_device(loaded.test_images, loaded.test_labels, test_index),
        test_index=test_index,
        normalization=loaded.normalization(tuple(config.std_multiplier)),
        dataset=loaded.describe(),
        flip=datasets.get(config.dataset).flip,
    )


def describe_test_set(test_index: torch.Tensor) -> dict[str, Any]:
    """What run.json records of the test images: how many, and a digest of which (equal digests: the same
    images, so two runs' predictions pair image by image)."""
    return {"images": len(test_index), "digest": io.digest(test_index.tolist())}
