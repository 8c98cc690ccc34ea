"Digits on demand through the scripts: class-conditional training, --digit, guidance, solvers, trajectory GIFs, streaming."
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fm_mnist.cli import generate_main
from fm_mnist.training import load_checkpoint, pretrained_path

ROOT = Path(__file__).resolve().parent.parent
TINY = ['--base_channels', '8', '--time_emb_dim', '16', '--batch_size', '32', '--max_steps_per_epoch', '4',
        '--num_samples', '10', '--num_steps', '3', '--device', 'cpu', '--no_progress']


def run(args):
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope='module')
def conditional(tmp_path_factory, mnist_root):
    res = tmp_path_factory.mktemp('cond') / 'results'
    rc, out, err = run([sys.executable, str(ROOT / 'train_main.py'), *TINY, '--conditional', '--time_sampling', 'logit_normal',
                        '--label_dropout', '0.2', '--epochs', '1', '--solver', 'heun', '--data_dir', str(mnist_root),
                        '--results_dir', str(res)])
    assert rc == 0, err
    assert 'class-conditional' in out
    return res


def test_conditional_checkpoint_records_its_settings(conditional):
    ckpt = load_checkpoint(conditional / 'checkpoint_final.pt')
    assert ckpt['model_config']['num_classes'] == 10
    assert ckpt['train_config']['time_sampling'] == 'logit_normal' and ckpt['train_config']['label_dropout'] == 0.2
    assert 'class_embedding.weight' in ckpt['model_state']
    grid = Image.open(conditional / 'final_samples' / 'final_samples_grid.png')
    assert grid.size == (10 * 30 + 2, 30 + 2)                       # 10 samples, one per digit, in one row of ten


def test_digits_cycle_one_per_column_without_digit(conditional, tmp_path):
    assert generate_main(['--results_dir', str(conditional), '--num_samples', '20', '--num_steps', '2', '--seed', '0',
                          '--device', 'cpu', '--output_dir', str(tmp_path)]) == 0
    assert Image.open(tmp_path / 'generated_samples_grid.png').size == (10 * 30 + 2, 2 * 30 + 2)  # ten columns


def test_one_digit_with_guidance_solver_and_trajectory(conditional, tmp_path, capsys):
    assert generate_main(['--results_dir', str(conditional), '--digit', '7', '--guidance_scale', '3', '--solver', 'midpoint',
                          '--num_samples', '9', '--num_steps', '4', '--seed', '0', '--device', 'cpu', '--save_trajectory',
                          '--output_dir', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'midpoint, 8 NFE' in out and 'digit 7' in out and 'guidance 3' in out
    gif = Image.open(tmp_path / 'generated_samples_trajectory.gif')
    assert gif.n_frames == 5 and gif.size == Image.open(tmp_path / 'generated_samples_grid.png').size


def test_streamed_generation_writes_every_sample(conditional, tmp_path):
    argv = ['--results_dir', str(conditional), '--num_samples', '23', '--num_steps', '2', '--seed', '1', '--device', 'cpu',
            '--save_numpy', '--save_individual']
    assert generate_main(argv + ['--batch_size', '5', '--output_dir', str(tmp_path / 'streamed')]) == 0
    assert generate_main(argv + ['--output_dir', str(tmp_path / 'whole')]) == 0
    streamed, whole = (np.load(tmp_path / d / 'generated_samples.npy') for d in ('streamed', 'whole'))
    assert streamed.shape == (23, 1, 28, 28) and np.allclose(streamed, whole, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / 'streamed' / 'individual').glob('*.png'))[-1] == 'sample_0022.png'
    assert not list((tmp_path / 'streamed').glob('.*.tmp'))


def test_evaluation_reports_agreement_with_the_requested_digit(conditional, tmp_path, mnist_root):
    out = tmp_path / 'ev.json'
    rc, stdout, err = run([sys.executable, '-m', 'fm_mnist', 'evaluate', '--results_dir', str(conditional), '--num_samples', '100',
                           '--num_steps', '2', '--guidance_scale', '1.5', '--device', 'cpu', '--data_dir', str(mnist_root), '--json', str(out)])
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert 0 <= res['label_agreement'] <= 1 and res['guidance_scale'] == 1.5 and res['nfe'] == 2
    assert 'agrees with requested digit' in stdout


@pytest.mark.parametrize('argv,needle', [(['--digit', '12'], 'invalid choice'), (['--guidance_scale', '-1'], 'guidance_scale'),
                                         (['--solver', 'leapfrog'], 'invalid choice'), (['--guidance_scale', 'nan'], 'guidance_scale')])
def test_invalid_sampling_flags(conditional, argv, needle, capsys):
    assert generate_main(['--results_dir', str(conditional), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and '\n' not in err


def test_digit_needs_a_conditional_model(tmp_path, mnist_root, capsys):
    res = tmp_path / 'uncond'
    rc, _, err = run([sys.executable, str(ROOT / 'train_main.py'), *TINY, '--epochs', '1', '--data_dir', str(mnist_root),
                      '--results_dir', str(res)])
    assert rc == 0, err
    assert generate_main(['--results_dir', str(res), '--digit', '3', '--device', 'cpu', '--output_dir', str(tmp_path / 'g')]) == 2
    assert 'class-conditional' in capsys.readouterr().err


@pytest.mark.skipif(not pretrained_path('conditional').is_file(), reason='the shipped conditional model is not in this tree')
def test_shipped_conditional_model_draws_the_requested_digit(tmp_path, mnist_root):
    from fm_mnist.evaluation import Evaluator
    from fm_mnist.training import load_pretrained
    flow = load_pretrained(device='cpu', name='conditional')
    x = flow.sample(50, 8, seed=0, solver='midpoint', labels=[i % 10 for i in range(50)], guidance_scale=2.0)
    res = Evaluator(mnist_root, device='cpu').evaluate(x, floor=False, labels=torch.tensor([i % 10 for i in range(50)]))
    assert res['label_agreement'] > 0.9
    assert generate_main(['--pretrained', '--digit', '4', '--num_samples', '4', '--num_steps', '4', '--solver', 'midpoint',
                          '--device', 'cpu', '--output_dir', str(tmp_path)]) == 0
