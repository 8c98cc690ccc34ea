"Data root precedence, the offline message, and what the loaders yield."
import os
from pathlib import Path

import pytest
import torch

from fm_mnist import load_mnist_data, load_mnist_tensors, MNISTUnavailableError
from fm_mnist.data import DATA_ENV_VAR, MNIST_FILES, resolve_data_root


def test_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    assert resolve_data_root() == Path('data')
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert resolve_data_root() == tmp_path
    assert resolve_data_root('explicit') == Path('explicit')


def test_empty_folder_offline_gives_one_clear_message(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist
    def no_network(*args, **kwargs): raise OSError('network unreachable')
    monkeypatch.setattr(mnist, 'download_and_extract_archive', no_network)
    with pytest.raises(MNISTUnavailableError) as e:
        load_mnist_data(root=tmp_path)
    msg = str(e.value)
    assert '\n' not in msg
    assert all(f in msg for f in MNIST_FILES)
    assert str(tmp_path / 'MNIST' / 'raw') in msg and 'download failed' in msg


def test_env_var_is_used(mnist_root, monkeypatch):
    monkeypatch.setenv(DATA_ENV_VAR, str(mnist_root))
    train, test = load_mnist_data(batch_size=32)
    assert (len(train.dataset), len(test.dataset)) == (60000, 10000)


def test_batches_shape_dtype_range(mnist_root):
    train, test = load_mnist_data(batch_size=50, root=mnist_root)
    x, y = next(iter(train))
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (50,)
    assert x.min() == -1 and x.max() <= 1
    xt, _ = next(iter(test))
    assert xt.shape == (50, 1, 28, 28)


def test_tensors_match_loader(mnist_root):
    x, y = load_mnist_tensors(mnist_root, train=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    _, test = load_mnist_data(batch_size=16, root=mnist_root)
    xb, yb = next(iter(test))
    torch.testing.assert_close(x[:16], xb)
    assert torch.equal(y[:16], yb)
    assert -1 <= x.min() and x.max() <= 1


def test_corrupt_files_are_reported(tmp_path):
    raw = tmp_path / 'MNIST' / 'raw'
    raw.mkdir(parents=True)
    for f in MNIST_FILES: (raw / f).write_bytes(b'junk')
    with pytest.raises(MNISTUnavailableError, match='could not be read'):
        load_mnist_tensors(tmp_path)
