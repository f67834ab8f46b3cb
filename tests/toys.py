"""Tiny datasets and modules the training tests share."""
import numpy as np
import torch
from torch.utils.data import Dataset


class Noise(Dataset):
    """Eight values from the dataset's own `rng`: the loader's worker seeding decides what it draws."""

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor(self.rng.random())


class Backbone(torch.nn.Sequential):
    """A backbone with the freezing hook trainer.fit calls."""

    def frozen_prefix(self, n):
        return list(self)[:n]
