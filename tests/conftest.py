"""Shared fixtures: MNIST from $FM_MNIST_DATA, a tiny flow, one tiny training run (unconditional and conditional) shared by
the whole test session, and one evaluator. Markers: `slow` (processes, longer training) and `bench` (the bench extra)."""
import contextlib, io, os
from pathlib import Path

import pytest
import torch

# a tiny UNet and a short run: every test that trains uses these flags
TINY_MODEL = ['--base_channels', '8', '--time_emb_dim', '16']
TINY = [*TINY_MODEL, '--batch_size', '32', '--max_steps_per_epoch', '4', '--num_samples', '6', '--num_steps', '3',
        '--device', 'cpu', '--no_progress']


def pytest_addoption(parser):
    parser.addoption('--bench', action='store_true', help='run the tests that need the bench extra (torchcfm)')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--bench'): return
    skip = pytest.mark.skip(reason='needs the bench extra: pip install -e ".[bench]", then pytest -m bench --bench')
    for item in items:
        if 'bench' in item.keywords: item.add_marker(skip)


@pytest.fixture(scope='session')
def mnist_root() -> Path:
    "The MNIST root named by $FM_MNIST_DATA (a folder whose MNIST/raw/ holds the four files)."
    root = os.environ.get('FM_MNIST_DATA')
    if not root: pytest.skip('set FM_MNIST_DATA to a folder holding MNIST/raw/ to run the tests that read MNIST')
    return Path(root)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_flow(num_classes=None, interval=False):
    "A tiny FlowMatching (or MeanFlow with `interval`) whose zero-initialised layers were given small random weights."
    from fm_mnist import FlowMatching, UNet
    torch.manual_seed(0)
    model = UNet(base_channels=8, time_emb_dim=16, num_classes=num_classes, interval=interval)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any(): p.normal_(std=0.02)   # a non-trivial velocity
    if interval:
        from fm_mnist.meanflow import MeanFlow
        return MeanFlow(model, device='cpu')
    return FlowMatching(model, device='cpu')


def quiet(fn, argv):
    "Call a script's main in-process; returns (exit code, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = fn(argv)
    return rc, out.getvalue(), err.getvalue()


def _train(tmp_path_factory, mnist_root, name, extra):
    from fm_mnist.cli import train_main
    res = tmp_path_factory.mktemp(name) / 'results'
    rc, out, err = quiet(train_main, [*TINY, '--epochs', '4', '--sample_every', '2', '--checkpoint_every', '2',
                                      '--data_dir', str(mnist_root), '--results_dir', str(res), *extra])
    assert rc == 0, err
    return res


@pytest.fixture(scope='session')
def trained(tmp_path_factory, mnist_root) -> Path:
    "The results folder of one tiny unconditional training run (4 epochs of 4 steps), shared by the whole session."
    return _train(tmp_path_factory, mnist_root, 'run', [])


@pytest.fixture(scope='session')
def trained_conditional(tmp_path_factory, mnist_root) -> Path:
    "The same for a class-conditional model (label dropout 0.2, logit-normal times, Heun grids)."
    return _train(tmp_path_factory, mnist_root, 'cond', ['--conditional', '--label_dropout', '0.2', '--solver', 'heun'])


@pytest.fixture(scope='session')
def evaluator(mnist_root):
    "One evaluator (classifier, test-set statistics) for the session."
    from fm_mnist.evaluation import Evaluator
    return Evaluator(mnist_root, device='cpu')
