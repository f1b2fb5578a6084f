"""Datasets for training: scikit-learn's bundled digits (offline, the default), torchvision's
MNIST / Fashion-MNIST / CIFAR-10 (downloaded to `paths.data_dir` when online), and a synthetic
set for smoke tests. Every split is fixed by `data.split_seed`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset, TensorDataset

from dnnlab.errors import ConfigError


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    channels: int
    num_classes: int
    image_size: int


def _split(x: torch.Tensor, y: torch.Tensor, val: float, test: float, seed: int):
    """Seeded, stratification-free random split into train/val/test TensorDatasets."""
    n = len(x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(round(n * test)), int(round(n * val))
    idx_test, idx_val, idx_train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return (TensorDataset(x[idx_train], y[idx_train]), TensorDataset(x[idx_val], y[idx_val]),
            TensorDataset(x[idx_test], y[idx_test]))


def _fractions(cfg: DictConfig) -> tuple[float, float]:
    val, test = float(cfg.get("val_fraction", 0.2)), float(cfg.get("test_fraction", 0.2))
    for key, v in (("data.val_fraction", val), ("data.test_fraction", test)):
        if not 0 < v < 1:
            raise ConfigError(f"{key} must be in (0, 1), got {v}")
    if val + test >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction must be < 1, got {val + test}")
    return val, test


def digits(cfg: DictConfig) -> Splits:
    """scikit-learn's 1,797 8x8 handwritten digits (bundled: no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    x = (x - 0.5) / 0.5
    return Splits(*_split(x, y, *_fractions(cfg), int(cfg.get("split_seed", 0))), 1, 10, 8)


def synthetic(cfg: DictConfig) -> Splits:
    """Random class prototypes plus noise: learnable, tiny, for smoke tests."""
    g = torch.Generator().manual_seed(int(cfg.get("split_seed", 0)))
    n, c, s, k = (int(cfg.get("samples", 512)), int(cfg.get("channels", 1)),
                  int(cfg.get("image_size", 8)), int(cfg.get("num_classes", 4)))
    protos = torch.randn(k, c, s, s, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    x = protos[y] + float(cfg.get("noise", 0.5)) * torch.randn(n, c, s, s, generator=g)
    return Splits(*_split(x, y, *_fractions(cfg), int(cfg.get("split_seed", 0))), c, k, s)


_TORCHVISION = {"mnist": ("MNIST", 1, 28), "fashion_mnist": ("FashionMNIST", 1, 28),
                "cifar10": ("CIFAR10", 3, 32)}


def torchvision_set(cfg: DictConfig, root: str) -> Splits:
    """MNIST, Fashion-MNIST or CIFAR-10 from torchvision; the official test set is the test
    split, and `val_fraction` of the training set (seeded) is the validation split."""
    import torchvision
    from torchvision import transforms

    name = str(cfg.name)
    cls_name, channels, size = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    tf = transforms.Compose([transforms.ToTensor(),
                             transforms.Normalize([0.5] * channels, [0.5] * channels)])
    download = bool(cfg.get("download", True))
    try:
        train_full = cls(root=root, train=True, download=download, transform=tf)
        test = cls(root=root, train=False, download=download, transform=tf)
    except Exception as err:  # noqa: BLE001 - missing files, no network
        raise ConfigError(
            f"data={name}: cannot load {cls_name} from {root} ({str(err).splitlines()[0][:120]})."
            f" Run once with network access (data.download=true), or copy the {cls_name} files "
            f"into {Path(root) / cls_name} (paths.data_dir={root})") from None
    val_frac, _ = _fractions(cfg)
    n_val = int(round(len(train_full) * val_frac))
    perm = torch.randperm(len(train_full),
                          generator=torch.Generator().manual_seed(int(cfg.get("split_seed", 0))))
    train = torch.utils.data.Subset(train_full, perm[n_val:].tolist())
    val = torch.utils.data.Subset(train_full, perm[:n_val].tolist())
    return Splits(train, val, test, channels, 10, size)


def make_data(cfg: DictConfig, data_dir: str) -> Splits:
    name = str(cfg.get("name", ""))
    if name == "digits":
        return digits(cfg)
    if name == "synthetic":
        return synthetic(cfg)
    if name in _TORCHVISION:
        return torchvision_set(cfg, data_dir)
    raise ConfigError(f"data.name: unknown dataset '{name}' (digits, synthetic, "
                      f"{', '.join(_TORCHVISION)})")
