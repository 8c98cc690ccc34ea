import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope='session')
def mnist_root() -> Path:
    "The MNIST root named by $FM_MNIST_DATA (a folder whose MNIST/raw/ holds the four files)."
    root = os.environ.get('FM_MNIST_DATA')
    if not root: pytest.skip('set FM_MNIST_DATA to a folder holding MNIST/raw/ to run the tests that read MNIST')
    return Path(root)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
