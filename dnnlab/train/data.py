"""Data sets for training, each a builder returning fixed train/val/test `Splits`:
scikit-learn's bundled digits (offline, the default), torchvision's MNIST / Fashion-MNIST /
CIFAR-10 (downloaded to `root` when online), and a synthetic set for smoke tests.

conf/data/<name>.yaml names the builder in `data.dataset` (`_target_` and keyword arguments);
the pipeline calls it with `root=paths.data_dir`. Every split is fixed by `split_seed`
(torch.utils.data.random_split with a seeded generator: one permutation, cut in order).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split

from dnnlab.core.errors import ConfigError, ShapeError, first_line, require


@dataclass
class Splits:
    """The three splits and the shape of what they hold."""

    train: Dataset
    val: Dataset
    test: Dataset
    channels: int
    num_classes: int
    image_size: int


def _check_fractions(val_fraction: float, test_fraction: float | None = None) -> None:
    for key, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if v is not None:
            require(0 < v < 1, f"data.dataset.{key}", v, "must be in (0, 1)")
    if test_fraction is not None:
        require(val_fraction + test_fraction < 1, "data.dataset.val_fraction", val_fraction,
                f"val_fraction + test_fraction must be < 1 (test_fraction={test_fraction})")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def split3(data: Dataset, val_fraction: float, test_fraction: float, split_seed: int
           ) -> tuple[Dataset, Dataset, Dataset]:
    """(train, val, test): one seeded permutation of the samples, cut into test, val, train."""
    _check_fractions(val_fraction, test_fraction)
    n = len(data)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    test, val, train = random_split(data, [n_test, n_val, n - n_test - n_val],
                                    generator=_generator(split_seed))
    return train, val, test


def digits(*, val_fraction: float = 0.2, test_fraction: float = 0.2, split_seed: int = 0,
           root: str | None = None) -> Splits:
    """scikit-learn's 1,797 8x8 handwritten digits (bundled: no download), scaled to [-1, 1].
    `root` is not used (nothing to download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)  # (N,)
    x = (x - 0.5) / 0.5
    return Splits(*split3(TensorDataset(x, y), val_fraction, test_fraction, split_seed), 1, 10, 8)


def synthetic(*, samples: int = 512, noise: float = 0.5, channels: int = 1, image_size: int = 8,
              num_classes: int = 4, val_fraction: float = 0.2, test_fraction: float = 0.2,
              split_seed: int = 0, root: str | None = None) -> Splits:
    """Random class prototypes plus Gaussian noise: learnable, tiny, for smoke tests."""
    require(samples >= 1, "data.dataset.samples", samples, "must be >= 1")
    g = _generator(split_seed)
    c, s, k = channels, image_size, num_classes
    protos = torch.randn(k, c, s, s, generator=g)  # (K, C, S, S)
    y = torch.randint(0, k, (samples,), generator=g)  # (N,)
    x = protos[y] + noise * torch.randn(samples, c, s, s, generator=g)  # (N, C, S, S)
    return Splits(*split3(TensorDataset(x, y), val_fraction, test_fraction, split_seed), c, k, s)


# name -> (torchvision class, channels, image size)
TORCHVISION = {"mnist": ("MNIST", 1, 28), "fashion_mnist": ("FashionMNIST", 1, 28),
               "cifar10": ("CIFAR10", 3, 32)}


def torchvision_set(name: str, *, root: str, download: bool = True, val_fraction: float = 0.2,
                    split_seed: int = 0) -> Splits:
    """MNIST, Fashion-MNIST or CIFAR-10 from torchvision, normalized to [-1, 1]: the official
    test set is the test split, and `val_fraction` of the training set (seeded) the val split."""
    import torchvision
    from torchvision import transforms

    if name not in TORCHVISION:
        raise ConfigError(f"data.name={name!r}: not a torchvision set ({', '.join(TORCHVISION)})")
    _check_fractions(val_fraction)
    cls_name, channels, size = TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    tf = transforms.Compose([transforms.ToTensor(),
                             transforms.Normalize([0.5] * channels, [0.5] * channels)])
    existed = _existing_dirs(Path(root), cls)
    try:
        train_full = cls(root=root, train=True, download=download, transform=tf)
        test = cls(root=root, train=False, download=download, transform=tf)
    except Exception as err:  # noqa: BLE001 - missing files, no network
        _remove_new_empty_dirs(Path(root), cls, existed)
        where, files = expected_files(cls, Path(root))
        raise ConfigError(
            f"data={name}: cannot load {cls_name} ({first_line(err)[:100]}). "
            f"torchvision reads {', '.join(files)} in {where} (paths.data_dir={root}): copy them "
            f"there, or run once with network access (data.dataset.download=true)") from None
    n_val = int(round(len(train_full) * val_fraction))
    val, train = random_split(train_full, [n_val, len(train_full) - n_val],
                              generator=_generator(split_seed))
    return Splits(train, val, test, channels, 10, size)


def expected_files(cls: type, root: Path) -> tuple[Path, list[str]]:
    """(the dir, the file names) torchvision's `cls` looks for under `root`: MNIST and
    Fashion-MNIST read root/<Class>/raw/<resource without .gz>; CIFAR-10 reads
    root/cifar-10-batches-py/<batch files> (or extracts root/cifar-10-python.tar.gz)."""
    if hasattr(cls, "resources"):  # MNIST, FashionMNIST
        return root / cls.__name__ / "raw", [Path(url).name.removesuffix(".gz")
                                              for url, _md5 in cls.resources]
    files = [f for f, _md5 in list(cls.train_list) + list(cls.test_list)] + [cls.meta["filename"]]
    return root / cls.base_folder, files


def _chain(root: Path, cls: type) -> list[Path]:
    """root, then each dir down to where torchvision reads the files (root/MNIST/raw)."""
    where, _ = expected_files(cls, root)
    return [root, *[root.joinpath(*where.relative_to(root).parts[:i + 1])
                    for i in range(len(where.relative_to(root).parts))]]


def _existing_dirs(root: Path, cls: type) -> set[Path]:
    return {d for d in _chain(root, cls) if d.is_dir()}


def _remove_new_empty_dirs(root: Path, cls: type, existed: set[Path]) -> None:
    """Remove the empty dirs a failed load made (root/MNIST/raw, ...), not ones there before."""
    for d in reversed(_chain(root, cls)):
        if d not in existed and d.is_dir():
            try:
                d.rmdir()  # only if empty
            except OSError:
                return


def mnist(*, root: str, download: bool = True, val_fraction: float = 0.2, split_seed: int = 0
          ) -> Splits:
    """torchvision's MNIST (1x28x28)."""
    return torchvision_set("mnist", root=root, download=download, val_fraction=val_fraction,
                           split_seed=split_seed)


def fashion_mnist(*, root: str, download: bool = True, val_fraction: float = 0.2,
                  split_seed: int = 0) -> Splits:
    """torchvision's Fashion-MNIST (1x28x28)."""
    return torchvision_set("fashion_mnist", root=root, download=download,
                           val_fraction=val_fraction, split_seed=split_seed)


def cifar10(*, root: str, download: bool = True, val_fraction: float = 0.2, split_seed: int = 0
            ) -> Splits:
    """torchvision's CIFAR-10 (3x32x32)."""
    return torchvision_set("cifar10", root=root, download=download, val_fraction=val_fraction,
                           split_seed=split_seed)


def check_fits(model: torch.nn.Module, splits: Splits, model_name: str, data_name: str,
               num_classes: int) -> None:
    """One line when the network cannot take the data's images (naming the layer; run on
    meta) or the labels do not fit its `num_classes` outputs."""
    from dnnlab.opcount import count_ops

    shape = [1, splits.channels, splits.image_size, splits.image_size]
    try:
        count_ops(model, shape)
    except ShapeError as err:
        raise ShapeError(f"model={model_name} cannot take data={data_name} images "
                         f"{shape[1:]}: {err}") from None
    if splits.num_classes > num_classes:
        raise ConfigError(f"data.num_classes={num_classes}: data={data_name} has labels 0 .. "
                          f"{splits.num_classes - 1} ({splits.num_classes} classes); set "
                          f"data.num_classes={splits.num_classes}")


@dataclass
class Batches:
    """The data as the loop sees it: the splits, the batch size, and the seed of the shuffles."""

    splits: Splits
    batch_size: int
    seed: int = 0

    def train(self, epoch: int) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)  # same after a resume
        return DataLoader(self.splits.train, batch_size=self.batch_size, shuffle=True,
                          generator=gen)
