"Training with several processes: `torchrun` with two CPU processes (gloo) gives the single-process layout and checkpoints."
import os, re, shutil, subprocess, sys
from pathlib import Path

import pytest

from conftest import quiet
from fm_mnist.checkpoint import load_flow, read_checkpoint
from fm_mnist.cli import train_main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ['--sample_every', '1', '--checkpoint_every', '1', '--num_samples', '6', '--num_steps', '3', '--device', 'cpu', '--no_progress']
MODEL = ['--base_channels', '8', '--time_emb_dim', '16', '--batch_size', '32']
TINY = [*MODEL, '--max_steps_per_epoch', '3', '--epochs', '2', *OUTPUT]


def layout(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob('*') if p.is_file())


def torchrun(args, tmp: Path, nproc=2, script: Path = ROOT / 'train_main.py'):
    "Run `script` (train_main.py) under torchrun; torchrun's own scratch folders go into `tmp` (a test's folder), not the system's."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TMPDIR': str(tmp)}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', str(script), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, mnist_root):
    "The same tiny run with two processes and with one."
    base = tmp_path_factory.mktemp('ddp')
    ddp = torchrun(TINY + ['--data_dir', str(mnist_root), '--results_dir', str(base / 'ddp')], base)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    rc, _, err = quiet(train_main, TINY + ['--data_dir', str(mnist_root), '--results_dir', str(base / 'single')])
    assert rc == 0, err
    return base, ddp


def test_two_processes_write_the_single_process_layout(runs):
    base, ddp = runs
    assert layout(base / 'ddp') == layout(base / 'single')
    assert 'on cpu x 2' in ddp.stdout and ddp.stdout.count('done in') == 1 and ddp.stdout.count('recipe:') == 1  # only process 0 talks


def test_two_process_checkpoint_is_an_ordinary_checkpoint(runs):
    base, _ = runs
    ddp, single = (read_checkpoint(base / d / 'checkpoint_final.pt', for_resume=True) for d in ('ddp', 'single'))
    assert ddp['step'] == single['step'] == 6                  # --batch_size is global: the same number of steps
    assert ddp['model_state'].keys() == single['model_state'].keys()  # no DDP 'module.' prefix
    assert ddp['train_config'] == single['train_config'] and len(ddp['loss_history']) == 6
    assert load_flow(base / 'ddp' / 'checkpoint_final.pt', device='cpu').sample(3, 2, seed=0).shape == (3, 1, 28, 28)


def test_resume_either_way(runs, tmp_path, mnist_root):
    base, _ = runs
    one = tmp_path / 'one'; shutil.copytree(base / 'ddp', one)   # a two-process checkpoint continues in one process...
    rc, _, err = quiet(train_main, OUTPUT + ['--epochs', '3', '--resume', '--data_dir', str(mnist_root), '--results_dir', str(one)])
    assert rc == 0, err
    assert read_checkpoint(one / 'checkpoint_final.pt')['step'] == 9
    two = tmp_path / 'two'; shutil.copytree(base / 'single', two)   # ...and a one-process checkpoint continues with two
    p = torchrun(OUTPUT + ['--epochs', '3', '--resume', '--data_dir', str(mnist_root), '--results_dir', str(two)], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = read_checkpoint(two / 'checkpoint_final.pt')
    assert ckpt['step'] == 9 and ckpt['epoch'] == 3


def test_global_batch_must_split_evenly(tmp_path, mnist_root):
    p = torchrun(['--batch_size', '33', '--epochs', '1', '--device', 'cpu', '--data_dir', str(mnist_root), '--results_dir', str(tmp_path)], tmp_path)
    assert p.returncode != 0
    assert 'fm-train: error: --batch_size 33 must be divisible by the number of processes (2)' in p.stderr  # each process says it


def test_a_failure_on_process_0_stops_every_process(tmp_path, mnist_root):
    "Process 0 cannot write its results folder: all processes stop at once with an error instead of waiting for a timeout."
    import time
    blocker = tmp_path / 'a_file'; blocker.write_text('not a folder')
    t0 = time.perf_counter()
    p = torchrun(TINY + ['--data_dir', str(mnist_root), '--results_dir', str(blocker / 'r')], tmp_path)
    assert p.returncode != 0 and time.perf_counter() - t0 < 120            # no waiting for a collective's timeout
    ours = [line for line in p.stderr.splitlines() if line.startswith('fm-train: error:')]   # (torchrun adds its own report)
    assert len(ours) == 2 and any('cannot write to --results_dir' in l for l in ours) and any('process 0 failed' in l for l in ours)


def test_a_time_budget_gives_every_process_one_plan(tmp_path, mnist_root):
    "--minutes: the number of steps comes from process 0's clock, so no process trains a step the others do not."
    args = [*MODEL, '--max_steps_per_epoch', '40', '--minutes', '0.1', *OUTPUT]
    p = torchrun(args + ['--data_dir', str(mnist_root), '--results_dir', str(tmp_path / 'r')], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = read_checkpoint(tmp_path / 'r' / 'checkpoint_final.pt')
    assert ckpt['step'] == ckpt['_train_config'].max_steps > 0


MEASURE = """
import datetime, sys, torch, torch.distributed as dist
from fm_mnist.config import ModelConfig, TrainConfig
from fm_mnist.training import new_train_state, measure_step_time
dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=60))
rank = dist.get_rank()
state = new_train_state(ModelConfig(base_channels=8, time_emb_dim=16), TrainConfig(epochs=1, batch_size=8), 64, device='cpu')
images = torch.rand(64, 1, 28, 28) * 2 - 1
# process 1 alone would measure for ever: it must stop when process 0 does, or it waits in a step process 0 never takes
seconds = measure_step_time(state, images, min_seconds=0.0 if rank == 0 else 1e9, max_steps=1000)
sys.stdout.write(f'rank {rank}: {seconds!r} s per step\\n'); sys.stdout.flush()   # one write: the two processes share the pipe
dist.destroy_process_group()
"""


def test_processes_stop_measuring_together(tmp_path):
    "Every measured step exchanges gradients, so process 0's clock decides when all processes stop measuring."
    script = tmp_path / 'measure.py'; script.write_text(MEASURE)
    p = torchrun([], tmp_path, script=script)
    assert p.returncode == 0, p.stderr[-3000:]
    said = dict(re.findall(r'rank (\d): (\S+) s per step', p.stdout))
    assert said.keys() == {'0', '1'} and said['0'] == said['1']    # both report process 0's measurement
