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


def training_index(config: TrainConfig, train_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which images of the data set's training split (``train_labels``) a run of ``config`` trains on, and which
    it holds out for validation (None without): also how an analysis finds the images a network was trained on."""
    train_index = torch.arange(len(train_labels))
    if config.train_subset is not None:
        train_index = data.balanced_subset(train_labels, config.train_subset, config.data_seed)
    labels = train_labels[train_index]
    if config.folds is not None:
        kept, held = data.kfold_split(labels, config.folds, config.fold, config.data_seed)
        return train_index[kept], train_index[held]
    if config.val_size:
        kept, held = data.stratified_split(labels, config.val_size, config.data_seed)
        return train_index[kept], train_index[held]
    return train_index, None


def make_splits(config: TrainConfig, device: torch.device, *, progress: data.Progress | None = None) -> Splits:
    loaded = data.load(config.dataset, config.data, progress=progress)
    train_index, val_index = training_index(config, loaded.train_labels)
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
