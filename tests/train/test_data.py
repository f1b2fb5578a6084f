"""dnnlab.train.data: the builders' splits are fixed by split_seed, disjoint, and the same as
one seeded permutation cut into test, val, train (the split every result was measured on)."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from dnnlab.core.errors import ConfigError
from dnnlab.run.config import to_settings
from dnnlab.train.data import Splits, digits, mnist, split3, synthetic, torchvision_set
from tests.train.conftest import compose_train


def _tensors(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.stack(ys)


def test_digits_split_is_one_seeded_permutation():
    s = digits(val_fraction=0.2, test_fraction=0.2, split_seed=0)
    assert isinstance(s, Splits) and (s.channels, s.num_classes, s.image_size) == (1, 10, 8)
    assert (len(s.train), len(s.val), len(s.test)) == (1079, 359, 359)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0 - 0.5) / 0.5
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    for ds, idx in ((s.test, perm[:359]), (s.val, perm[359:718]), (s.train, perm[718:])):
        xs, ys = _tensors(ds)
        assert torch.equal(xs, x[idx]) and torch.equal(ys, torch.tensor(d.target)[idx])
    assert float(_tensors(s.train)[0].min()) == -1.0 and float(_tensors(s.train)[0].max()) == 1.0


def test_split_seed_changes_the_split_and_fixes_it():
    a, b, c = (digits(split_seed=k) for k in (0, 0, 1))
    assert a.test.indices == b.test.indices and a.test.indices != c.test.indices
    assert not set(a.train.indices) & set(a.val.indices) | set(a.test.indices) & set(
        a.val.indices)


def test_synthetic_shapes_and_determinism():
    s = synthetic(samples=100, channels=3, image_size=5, num_classes=4, noise=0.1)
    x, y = _tensors(s.train)
    assert x.shape == (60, 3, 5, 5) and int(y.max()) < 4 and (len(s.val), len(s.test)) == (20, 20)
    assert torch.equal(x, _tensors(synthetic(samples=100, channels=3, image_size=5,
                                             num_classes=4, noise=0.1).train)[0])


def test_the_configs_dataset_builds_through_instantiate(tmp_path):
    s = to_settings(compose_train("data=synthetic", "data.channels=2"))
    splits = instantiate(s.data.dataset, root=str(tmp_path))
    assert splits.channels == 2 and _tensors(splits.val)[0].shape[1] == 2


@pytest.mark.parametrize("kwargs,match", [
    ({"val_fraction": 0}, r"^data.dataset.val_fraction=0: must be in \(0, 1\)"),
    ({"test_fraction": 1.5}, r"^data.dataset.test_fraction=1.5"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction must be < 1"),
])
def test_bad_fractions(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        digits(**kwargs)


def test_torchvision_offline_says_where_to_put_the_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^data=mnist: cannot load MNIST .*torchvision reads "
                                          r"train-images-idx3-ubyte, .* in .*MNIST/raw"):
        mnist(root=str(tmp_path), download=False)
    with pytest.raises(ConfigError, match=r"^data.name='svhn'"):
        torchvision_set("svhn", root=str(tmp_path))


def test_split3_cuts_any_dataset():
    ds = torch.utils.data.TensorDataset(torch.arange(10.0))
    train, val, test = split3(ds, 0.2, 0.3, 0)
    assert (len(train), len(val), len(test)) == (5, 2, 3)
    assert sorted(train.indices + val.indices + test.indices) == list(range(10))
