"Digits on demand through the scripts: class-conditional training, --digit, guidance, solvers, trajectory GIFs, streaming."
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, quiet
from fm_mnist.checkpoint import load_flow, pretrained_path, read_checkpoint
from fm_mnist.cli import evaluate_main, generate_main, train_main


def test_conditional_checkpoint_records_its_settings(trained_conditional):
    ckpt = read_checkpoint(trained_conditional / 'checkpoint_final.pt')
    assert ckpt['_model_config'].num_classes == 10 and 'class_embedding.weight' in ckpt['model_state']
    assert ckpt['_train_config'].time_sampling == 'logit_normal' and ckpt['_train_config'].label_dropout == 0.2
    grid = Image.open(trained_conditional / 'final_samples' / 'final_samples_grid.png')
    assert grid.size == (6 * 30 + 2, 30 + 2)                       # 6 samples, digits 0-5, in one row (of ten columns)


def test_digits_cycle_one_per_column_without_digit(trained_conditional, tmp_path):
    assert quiet(generate_main, ['--results_dir', str(trained_conditional), '--num_samples', '20', '--num_steps', '2',
                                 '--seed', '0', '--device', 'cpu', '--output_dir', str(tmp_path)])[0] == 0
    assert Image.open(tmp_path / 'generated_samples_grid.png').size == (10 * 30 + 2, 2 * 30 + 2)  # ten columns


def test_one_digit_with_guidance_solver_and_trajectory(trained_conditional, tmp_path):
    rc, out, err = quiet(generate_main, ['--results_dir', str(trained_conditional), '--digit', '7', '--guidance_scale', '3',
                                         '--solver', 'midpoint', '--num_samples', '9', '--num_steps', '4', '--seed', '0',
                                         '--device', 'cpu', '--save_trajectory', '--output_dir', str(tmp_path)])
    assert rc == 0, err
    assert 'midpoint, 16 NFE' in out and 'digit 7' in out and 'guidance 3' in out   # 8 guided calls, 2 forward passes each
    gif = Image.open(tmp_path / 'generated_samples_trajectory.gif')
    assert gif.n_frames == 5 and gif.size == Image.open(tmp_path / 'generated_samples_grid.png').size


def test_streamed_generation_writes_every_sample(trained_conditional, tmp_path):
    argv = ['--results_dir', str(trained_conditional), '--num_samples', '23', '--num_steps', '2', '--seed', '1', '--device', 'cpu',
            '--save_numpy', '--save_individual']
    assert quiet(generate_main, argv + ['--batch_size', '5', '--output_dir', str(tmp_path / 'streamed')])[0] == 0
    assert quiet(generate_main, argv + ['--output_dir', str(tmp_path / 'whole')])[0] == 0
    streamed, whole = (np.load(tmp_path / d / 'generated_samples.npy') for d in ('streamed', 'whole'))
    assert streamed.shape == (23, 1, 28, 28) and np.allclose(streamed, whole, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / 'streamed' / 'individual').glob('*.png'))[-1] == 'sample_0022.png'
    assert not list((tmp_path / 'streamed').glob('.*.tmp'))


def test_evaluation_reports_agreement_with_the_requested_digit(trained_conditional, tmp_path, mnist_root, evaluator, monkeypatch):
    import fm_mnist.evaluation
    monkeypatch.setattr(fm_mnist.evaluation, 'Evaluator', lambda *a, **k: evaluator)   # the session's evaluator
    out = tmp_path / 'ev.json'
    rc, stdout, err = quiet(evaluate_main, ['--results_dir', str(trained_conditional), '--num_samples', '100', '--num_steps', '2',
                                            '--guidance_scale', '1.5', '--device', 'cpu', '--data_dir', str(mnist_root),
                                            '--json', str(out)])
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert 0 <= res['label_agreement'] <= 1 and res['guidance_scale'] == 1.5 and res['nfe'] == 4
    assert 'agrees with requested digit' in stdout


@pytest.mark.parametrize('argv,needle', [(['--digit', '12'], 'invalid choice'), (['--guidance_scale', '-1'], 'guidance_scale'),
                                         (['--solver', 'leapfrog'], 'invalid choice'), (['--guidance_scale', 'nan'], 'guidance_scale')])
def test_invalid_sampling_flags(trained_conditional, argv, needle):
    rc, _, err = quiet(generate_main, ['--results_dir', str(trained_conditional), *argv])
    assert rc == 2 and needle in err and '\n' not in err.strip()


def test_digit_needs_a_conditional_model(trained, tmp_path):
    rc, _, err = quiet(generate_main, ['--results_dir', str(trained), '--digit', '3', '--device', 'cpu', '--output_dir', str(tmp_path)])
    assert rc == 2 and 'class-conditional' in err


@pytest.mark.skipif(not pretrained_path('conditional').is_file(), reason='the shipped conditional model is not in this tree')
def test_shipped_conditional_model_draws_the_requested_digit(tmp_path, evaluator):
    flow = load_flow('conditional', device='cpu')
    labels = [i % 10 for i in range(50)]
    x = flow.sample(50, 4, seed=0, solver='midpoint', labels=labels, guidance_scale=2.0)
    assert evaluator.evaluate(x, floor=False, labels=torch.tensor(labels))['label_agreement'] > 0.9
    assert quiet(generate_main, ['--pretrained', '--digit', '4', '--num_samples', '4', '--num_steps', '4', '--solver', 'midpoint',
                                 '--device', 'cpu', '--output_dir', str(tmp_path)])[0] == 0
