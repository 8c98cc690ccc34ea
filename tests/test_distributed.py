"Training with several processes: `torchrun` with two CPU processes (gloo) gives the single-process layout and checkpoints."
import os, shutil, subprocess, sys
from pathlib import Path

import pytest
import torch

from fm_mnist.training import flow_from_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = ['--base_channels', '8', '--time_emb_dim', '16', '--batch_size', '32', '--max_steps_per_epoch', '3', '--epochs', '2',
        '--sample_every', '1', '--checkpoint_every', '1', '--num_samples', '6', '--num_steps', '3', '--device', 'cpu',
        '--no_progress']


def layout(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob('*') if p.is_file())


def torchrun(args, nproc=2):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', str(ROOT / 'train_main.py'), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, mnist_root):
    "The same tiny run with two processes and with one."
    base = tmp_path_factory.mktemp('ddp')
    ddp = torchrun(TINY + ['--data_dir', str(mnist_root), '--results_dir', str(base / 'ddp')])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, str(ROOT / 'train_main.py'), *TINY, '--data_dir', str(mnist_root),
                             '--results_dir', str(base / 'single')], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    return base, ddp


def test_two_processes_write_the_single_process_layout(runs):
    base, ddp = runs
    assert layout(base / 'ddp') == layout(base / 'single')
    assert 'x 2 processes' in ddp.stdout and ddp.stdout.count('done:') == 1  # only process 0 talks


def test_two_process_checkpoint_is_an_ordinary_checkpoint(runs, tmp_path):
    base, _ = runs
    ddp, single = load_checkpoint(base / 'ddp' / 'checkpoint_final.pt'), load_checkpoint(base / 'single' / 'checkpoint_final.pt')
    assert ddp['step'] == single['step'] == 6                  # --batch_size is global: the same number of steps
    assert ddp['model_state'].keys() == single['model_state'].keys()  # no DDP 'module.' prefix
    assert ddp['train_config'] == single['train_config'] and len(ddp['loss_history']) == 6
    flow = flow_from_checkpoint(base / 'ddp' / 'checkpoint_final.pt', device='cpu')
    assert flow.sample(3, 2, seed=0).shape == (3, 1, 28, 28)
    out = tmp_path / 'gen'
    gen = subprocess.run([sys.executable, str(ROOT / 'generate_samples.py'), '--checkpoint', str(base / 'ddp' / 'checkpoint_final.pt'),
                          '--num_samples', '4', '--num_steps', '2', '--device', 'cpu', '--output_dir', str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr
    assert (out / 'generated_samples_grid.png').is_file()


def test_resume_either_way(runs, tmp_path, mnist_root):
    base, _ = runs
    # a two-process checkpoint continues in one process...
    one = tmp_path / 'one'; shutil.copytree(base / 'ddp', one)
    p = subprocess.run([sys.executable, str(ROOT / 'train_main.py'), *TINY, '--epochs', '3', '--resume', '--data_dir', str(mnist_root),
                        '--results_dir', str(one)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(one / 'checkpoint_final.pt')['step'] == 9
    # ...and a one-process checkpoint continues with two
    two = tmp_path / 'two'; shutil.copytree(base / 'single', two)
    p = torchrun(TINY + ['--epochs', '3', '--resume', '--data_dir', str(mnist_root), '--results_dir', str(two)])
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = load_checkpoint(two / 'checkpoint_final.pt')
    assert ckpt['step'] == 9 and ckpt['epoch'] == 3


def test_global_batch_must_split_evenly(tmp_path, mnist_root):
    p = torchrun(['--batch_size', '33', '--epochs', '1', '--device', 'cpu', '--data_dir', str(mnist_root), '--results_dir', str(tmp_path)])
    assert p.returncode != 0
    assert 'fm-train: error: --batch_size 33 must be divisible by the number of processes (2)' in p.stderr  # each process says it
