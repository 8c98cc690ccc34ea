"End to end: the training and generation scripts on real MNIST with a tiny model, their files, time budgets, resume, and bad input."
import os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, quiet
from fm_mnist.checkpoint import CHECKPOINT_VERSION, pretrained_path, read_checkpoint
from fm_mnist.cli import generate_main, train_main

ROOT = Path(__file__).resolve().parent.parent


def run(args, cwd=ROOT):
    "Run a command line; returns (exit code, stdout, stderr)."
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def script(name):
    return [sys.executable, str(ROOT / name)]


def weights(path):
    return torch.load(path, weights_only=True, map_location='cpu')['model_state']


def one_line_error(rc, err, code):
    assert rc == code, err
    assert 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_training_writes_the_seed_layout(trained):
    res = trained
    for e in (2, 4):
        assert (res / f'checkpoint_epoch_{e}.pt').is_file()
        assert Image.open(res / f'samples_epoch_{e}.png').size == (6 * 30 + 2, 30 + 2)  # 6 samples fit one row of 8
        assert len(list((res / 'individual_samples' / f'epoch_{e}').glob('*.png'))) == 6
    assert not (res / 'checkpoint_epoch_1.pt').exists() and not (res / 'samples_epoch_1.png').exists()
    assert not list(res.glob('samples_step_*.png'))          # step grids only in time-budgeted runs (or when asked)
    final = res / 'final_samples'
    assert Image.open(final / 'final_samples_grid.png').mode == 'L'
    pngs = sorted((final / 'individual').glob('*.png'))
    assert len(pngs) == 6 and Image.open(pngs[0]).size == (28, 28)
    arr = np.load(final / 'final_samples.npy')
    assert arr.shape == (6, 1, 28, 28) and arr.dtype == np.float32 and arr.min() >= -1 and arr.max() <= 1


def test_checkpoint_contents(trained):
    ckpt = read_checkpoint(trained / 'checkpoint_final.pt', for_resume=True)
    assert ckpt['format'] == 'fm_mnist' and ckpt['format_version'] == CHECKPOINT_VERSION
    assert ckpt['epoch'] == 4 and ckpt['step'] == 16 and ckpt['steps_per_epoch'] == 4
    assert ckpt['_model_config'].base_channels == 8 and ckpt['_train_config'].batch_size == 32
    assert ckpt['loss_history'].shape == (16,) and torch.isfinite(ckpt['loss_history']).all()
    assert not list(trained.glob('.*.tmp'))  # atomic writes leave no temporary files


def test_generate_with_every_flag(trained, tmp_path):
    out = tmp_path / 'gen'
    rc, stdout, err = quiet(generate_main, ['--results_dir', str(trained), '--num_samples', '10', '--num_steps', '5',
                                            '--output_dir', str(out), '--save_individual', '--save_numpy', '--seed', '3',
                                            '--device', 'cpu', '--batch_size', '4'])
    assert rc == 0, err
    assert 'checkpoint_final.pt' in stdout and 'euler, 5 NFE' in stdout
    assert Image.open(out / 'generated_samples_grid.png').size == (8 * 30 + 2, 2 * 30 + 2)
    assert len(list((out / 'individual').glob('*.png'))) == 10
    a = np.load(out / 'generated_samples.npy')
    assert a.shape == (10, 1, 28, 28) and a.dtype == np.float32
    # same seed, same samples, whatever the batch size
    assert quiet(generate_main, ['--checkpoint', str(trained / 'checkpoint_epoch_4.pt'), '--num_samples', '10', '--num_steps', '5',
                                 '--output_dir', str(tmp_path / 'again'), '--save_numpy', '--seed', '3'])[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / 'again' / 'generated_samples.npy'), a, atol=1e-5)


def test_default_generation_reads_results_and_writes_there(trained, tmp_path, monkeypatch):
    shutil.copytree(trained, tmp_path / 'results')
    monkeypatch.chdir(tmp_path)
    rc, _, err = quiet(generate_main, ['--num_samples', '4', '--num_steps', '2'])
    assert rc == 0, err
    assert (tmp_path / 'results' / 'generated_samples' / 'generated_samples_grid.png').is_file()
    assert not (tmp_path / 'results' / 'generated_samples' / 'individual').exists()


def test_newest_checkpoint_is_highest_epoch_without_final(trained, tmp_path):
    res = tmp_path / 'results'
    res.mkdir()
    for e in (2, 4): shutil.copy(trained / f'checkpoint_epoch_{e}.pt', res)
    rc, stdout, err = quiet(generate_main, ['--results_dir', str(res), '--num_samples', '2', '--num_steps', '2',
                                            '--output_dir', str(tmp_path / 'o')])
    assert rc == 0 and 'checkpoint_epoch_4.pt' in stdout, err


@pytest.mark.skipif(not pretrained_path().is_file(), reason='the shipped model is not in this tree')
def test_generate_with_the_shipped_model(tmp_path):
    rc, stdout, err = quiet(generate_main, ['--pretrained', '--num_samples', '8', '--num_steps', '8', '--output_dir', str(tmp_path),
                                            '--save_numpy', '--seed', '0'])
    assert rc == 0, err
    assert np.load(tmp_path / 'generated_samples.npy').shape == (8, 1, 28, 28) and 'the shipped unconditional model' in stdout


def plan_alone(monkeypatch):
    "Time-budgeted runs with a fixed plan: as if a step took 50 ms (a plan of ~100 steps), and no deadline to re-plan by."
    import fm_mnist.cli as cli
    monkeypatch.setattr(cli, 'measure_step_time', lambda *a, **k: 0.05)
    monkeypatch.setattr(cli, '_seconds_per_grid', lambda *a, **k: [0.01, 0.01])
    real_train = cli.train
    monkeypatch.setattr(cli, 'train', lambda *a, deadline=None, **k: real_train(*a, **k))
    return cli


def test_a_time_budget_plans_writes_step_grids_and_resumes_exactly(mnist_root, tmp_path, monkeypatch):
    plan_alone(monkeypatch)
    args = [*TINY, '--max_steps_per_epoch', '40', '--minutes', '0.1', '--checkpoint_every', '1', '--data_dir', str(mnist_root)]
    rc, out, err = quiet(train_main, args + ['--results_dir', str(tmp_path / 'full')])
    assert rc == 0, err
    assert not list((tmp_path / 'full').glob('checkpoint_step_*.pt'))         # the final checkpoint supersedes them
    first = out.splitlines()[0]
    assert first.startswith('recipe: ') and '0.1-minute budget' in first and '640 images/s measured on cpu' in first
    assert '(auto: no CUDA GPU, so the cpu recipe)' in first            # not the auto recipe's own 30 minutes
    full = read_checkpoint(tmp_path / 'full' / 'checkpoint_final.pt', for_resume=True)
    steps = full['_train_config'].max_steps
    assert 40 < steps < 120 and full['step'] == steps and full['_train_config'].minutes == 0.1
    assert len(list((tmp_path / 'full').glob('samples_step_*.png'))) >= 9       # about every tenth of the run
    # a copy of the run stopped after epoch 1 resumes to the same weights: the plan is in its checkpoint
    part = tmp_path / 'part'; part.mkdir()
    shutil.copy(tmp_path / 'full' / 'checkpoint_epoch_1.pt', part)
    rc, out, err = quiet(train_main, ['--resume', '--results_dir', str(part), '--data_dir', str(mnist_root), '--no_progress',
                                      '--num_samples', '2', '--num_steps', '2'])
    assert rc == 0 and out.startswith('recipe: resuming'), err
    wf, wp = weights(tmp_path / 'full' / 'checkpoint_final.pt'), weights(part / 'checkpoint_final.pt')
    assert all(torch.equal(wf[k], wp[k]) for k in wf)


def test_a_run_stopped_between_epochs_resumes_from_its_step_checkpoint(mnist_root, tmp_path, monkeypatch):
    import fm_mnist.cli as cli                  # a fixed length (a time budget's plan would depend on the clock): 2 x 40 steps
    args = [*TINY, '--epochs', '2', '--max_steps_per_epoch', '40', '--sample_every_steps', '10', '--sample_every', '99',
            '--checkpoint_every', '99', '--data_dir', str(mnist_root)]
    assert quiet(train_main, args + ['--results_dir', str(tmp_path / 'full')])[0] == 0
    real_save, grids = cli._save_samples, []
    def stop_at_the_third_grid(flow, args, seed, grid, *rest):
        grids.append(grid)
        if len(grids) == 3: raise KeyboardInterrupt        # Ctrl-C while it draws: its checkpoint is already written
        return real_save(flow, args, seed, grid, *rest)
    monkeypatch.setattr(cli, '_save_samples', stop_at_the_third_grid)
    stopped = tmp_path / 'stopped'
    rc, _, err = quiet(train_main, args + ['--results_dir', str(stopped)])
    kept = list(stopped.glob('checkpoint_*.pt'))
    assert [p.name for p in kept] == [grids[-1].name.replace('samples', 'checkpoint').replace('.png', '.pt')]  # the newest only
    assert one_line_error(rc, err, 130).strip().endswith(f'continue from {kept[0]} with --resume')
    step = int(kept[0].stem.rsplit('_', 1)[1])
    assert step == 30                                       # inside the first epoch: no epoch checkpoint to fall back on
    monkeypatch.setattr(cli, '_save_samples', real_save)
    rc, out, err = quiet(train_main, ['--resume', '--results_dir', str(stopped), '--data_dir', str(mnist_root), '--no_progress',
                                      '--num_samples', '2', '--num_steps', '2'])
    assert rc == 0 and out.startswith(f'recipe: resuming {kept[0]} after {step} steps (0 full epochs)'), err
    assert [p.name for p in stopped.glob('checkpoint_*.pt')] == ['checkpoint_final.pt']
    wf, ws = weights(tmp_path / 'full' / 'checkpoint_final.pt'), weights(stopped / 'checkpoint_final.pt')
    assert all(torch.equal(wf[k], ws[k]) for k in wf)
    lf = torch.load(tmp_path / 'full' / 'checkpoint_final.pt', weights_only=True)['loss_history']
    assert torch.equal(lf, torch.load(stopped / 'checkpoint_final.pt', weights_only=True)['loss_history'])


@pytest.mark.slow
@pytest.mark.parametrize('guess', [None, 0.2])    # the measured seconds per step, or a first guess far too slow
def test_a_time_budget_is_kept(mnist_root, tmp_path, monkeypatch, guess):
    import time
    import fm_mnist.cli as cli
    if guess: monkeypatch.setattr(cli, 'measure_step_time', lambda *a, **k: guess)
    t0 = time.perf_counter()
    rc, out, err = quiet(train_main, [*TINY, '--minutes', '0.5', '--num_samples', '2', '--num_steps', '1', '--data_dir', str(mnist_root),
                                      '--results_dir', str(tmp_path)])
    took = time.perf_counter() - t0
    assert rc == 0, err
    # the budget bounds the run: not a speed target, so the margin allows for a busy machine and the final samples
    assert 0.6 * 30 < took < 2 * 30, took
    # a wrong first guess does not stand: the run goes on at its own pace (the tiny model takes far less than 0.2 s a step)
    if guess: assert read_checkpoint(tmp_path / 'checkpoint_final.pt', for_resume=True)['step'] > 2 * 30 / guess
    # the first line gives the first plan as a guess; an epoch's line says when the plan has moved since
    assert 're-planned as it goes' in out.splitlines()[0]
    if guess: assert 'the plan is now' in out


def test_first_line_names_the_recipe_and_why(mnist_root, tmp_path):
    rc, out, err = quiet(train_main, [*TINY, '--epochs', '1', '--preset', 'auto', '--data_dir', str(mnist_root),
                                      '--results_dir', str(tmp_path)])
    assert rc == 0, err
    first = out.splitlines()[0]
    if torch.cuda.is_available(): assert 'gpu' in first
    else: assert first.startswith('recipe: cpu, 1 epoch (auto: no CUDA GPU')   # --epochs replaces the 30-minute budget


def test_same_seed_same_weights(mnist_root, tmp_path):
    args = [*TINY, '--epochs', '2', '--sample_every', '99', '--checkpoint_every', '99', '--data_dir', str(mnist_root)]
    for name in ('a', 'b'): assert quiet(train_main, args + ['--results_dir', str(tmp_path / name)])[0] == 0
    wa, wb = weights(tmp_path / 'a' / 'checkpoint_final.pt'), weights(tmp_path / 'b' / 'checkpoint_final.pt')
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize('classes, solver, steps', [(None, 'euler', 100), (10, 'euler', 100), (10, 'midpoint', 4)])
def test_grid_time_estimate_counts_each_forward_pass_once(monkeypatch, classes, solver, steps):
    "A time-budgeted run reserves time for its sample grids: the estimate must match what a grid costs, guided or not."
    import argparse
    import fm_mnist.cli as cli
    from fm_mnist import FlowMatching, UNet
    from fm_mnist.sampler import cycle_labels
    flow = FlowMatching(UNet(base_channels=8, time_emb_dim=16, num_classes=classes), device='cpu')
    clock, forward = [0.0], flow.model.forward
    def counted(x, *a, **k):                     # a clock that advances one "second" per image through the network
        clock[0] += x.shape[0]
        return forward(x, *a, **k)
    monkeypatch.setattr(flow.model, 'forward', counted)
    monkeypatch.setattr(cli.time, 'perf_counter', lambda: clock[0])
    args = argparse.Namespace(num_samples=16, num_steps=steps, solver=solver, guidance_scale=None, rtol=1e-4, atol=1e-4)
    estimate, cheap = cli._seconds_per_grid(flow, torch.device('cpu'), args, argparse.Namespace(**{**vars(args), **cli.PROGRESS_SAMPLING}))
    clock[0] = 0.0
    flow.sample(num_samples=16, num_steps=steps, solver=solver, seed=0, labels=cycle_labels(16, classes))
    assert estimate == clock[0] == 16 * steps * (2 if solver == 'midpoint' else 1) * (2 if classes else 1)
    assert cheap == 16 * 8 * (2 if classes else 1)                          # the grids along the way: 8 NFE


KILL_AFTER_EPOCH_2 = '''
import os, signal, sys
import fm_mnist.cli as cli
real = cli.save_checkpoint
def save_then_die(ckpt, path):
    written = real(ckpt, path)
    if written.name == 'checkpoint_epoch_2.pt': os.kill(os.getpid(), signal.SIGKILL)   # killed, as by the OOM killer
    return written
cli.save_checkpoint = save_then_die
sys.exit(cli.train_main(sys.argv[1:]))
'''


@pytest.mark.slow
def test_killed_then_resumed_equals_uninterrupted(mnist_root, tmp_path):
    args = [*TINY, '--epochs', '4', '--sample_every', '99', '--checkpoint_every', '1', '--data_dir', str(mnist_root)]
    assert quiet(train_main, args + ['--results_dir', str(tmp_path / 'full')])[0] == 0
    killed = tmp_path / 'killed'
    rc, _, _ = run([sys.executable, '-c', KILL_AFTER_EPOCH_2, *args, '--results_dir', str(killed)])
    assert rc == -9 and (killed / 'checkpoint_epoch_2.pt').is_file() and not (killed / 'checkpoint_epoch_3.pt').exists()
    rc, out, err = quiet(train_main, ['--resume', '--results_dir', str(killed), '--data_dir', str(mnist_root), '--no_progress',
                                      '--num_samples', '2', '--num_steps', '2'])
    assert rc == 0 and 'resuming' in out, err
    wf, wk = weights(tmp_path / 'full' / 'checkpoint_final.pt'), weights(killed / 'checkpoint_final.pt')
    assert all(torch.equal(wf[k], wk[k]) for k in wf)
    lf = torch.load(tmp_path / 'full' / 'checkpoint_final.pt', weights_only=True)['loss_history']
    assert torch.equal(lf, torch.load(killed / 'checkpoint_final.pt', weights_only=True)['loss_history'])


@pytest.mark.slow
def test_console_scripts_and_seed_scripts_run():
    for cmd in (['fm-train'], ['fm-generate'], ['fm-evaluate'], [sys.executable, '-m', 'fm_mnist', 'evaluate'],
                script('train_main.py'), script('generate_samples.py')):
        rc, out, err = run(cmd + ['--help'])
        assert rc == 0 and '--device' in out, err
    rc, out, err = run([sys.executable, '-m', 'fm_mnist', 'generate', '--num_steps', '0'])
    one_line_error(rc, err, 2)
    rc, out, err = run([sys.executable, '-m', 'fm_mnist', '--help'])
    assert rc == 0 and all(c in out for c in ('train', 'generate', 'evaluate')) and not err, err


@pytest.mark.parametrize('argv', [['--epochs', '0'], ['--epochs', '-1'], ['--batch_size', '0'], ['--lr', 'nan'],
                                  ['--time_emb_dim', '15'], ['--preset', 'tpu'], ['--epochs', '2', '--minutes', '5'],
                                  ['--label_dropout', '1.5'], ['--coupling', 'nearest'], ['--base_channels', '100000'],
                                  ['--optimizer', 'sgd'], ['--muon_lr', '0']])
def test_invalid_training_flags(argv, tmp_path):
    rc, _, err = quiet(train_main, argv + ['--results_dir', str(tmp_path / 'results'), '--no_progress'])
    one_line_error(rc, err, 2)
    assert not (tmp_path / 'results').exists()  # nothing is written for an invalid flag


def test_recipe_flags_cannot_change_on_resume(trained, tmp_path):
    for flag in (['--lr', '0.1'], ['--preset', 'quick']):
        rc, _, err = quiet(train_main, ['--resume', '--results_dir', str(trained), *flag, '--no_progress'])
        assert f'{flag[0]} cannot be changed when resuming' in one_line_error(rc, err, 2)


def test_a_config_error_names_only_flags_that_exist(tmp_path):
    rc, _, err = quiet(train_main, ['--base_channels', '1000', '--results_dir', str(tmp_path / 'r'), '--no_progress'])
    msg = one_line_error(rc, err, 2)
    assert 'channel_mults' in msg and '--channel_mults' not in msg   # a limit on a field that has no flag of its own


@pytest.mark.parametrize('argv', [['--num_samples', '0'], ['--num_steps', '-5'], ['--batch_size', '0'],
                                  ['--checkpoint', 'a.pt', '--pretrained'], ['--pretrained', '--solver', 'meanflow'],
                                  ['--pretrained', 'unconditional', '--digit', '3']])
def test_invalid_generation_flags(argv):
    rc, _, err = quiet(generate_main, argv)
    one_line_error(rc, err, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_absent_device():
    for main in (train_main, generate_main):
        rc, _, err = quiet(main, ['--device', 'cuda'])
        assert 'CUDA is not available' in one_line_error(rc, err, 2)


def test_no_checkpoint_yet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = quiet(generate_main, [])
    assert 'train first with' in one_line_error(rc, err, 1)
    rc, _, err = quiet(train_main, ['--resume', '--results_dir', str(tmp_path / 'r'), '--data_dir', str(tmp_path / 'no_data')])
    one_line_error(rc, err, 1)
    assert not (tmp_path / 'no_data').exists()  # the missing checkpoint is reported before any data is read


def test_absent_dataset(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist
    def no_network(*args, **kwargs): raise OSError('network unreachable')
    monkeypatch.setattr(mnist, 'download_and_extract_archive', no_network)
    rc, _, err = quiet(train_main, ['--data_dir', str(tmp_path / 'nothing'), '--results_dir', str(tmp_path / 'r'), '--no_progress'])
    assert 'train-images-idx3-ubyte' in one_line_error(rc, err, 1)


def test_unwritable_output(tmp_path, trained):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    rc, _, err = quiet(generate_main, ['--checkpoint', str(trained / 'checkpoint_final.pt'), '--output_dir', str(blocker / 'out'),
                                       '--num_samples', '2', '--num_steps', '2'])
    assert 'cannot write to --output_dir' in one_line_error(rc, err, 1)
    rc, _, err = quiet(train_main, ['--results_dir', str(blocker / 'r'), '--no_progress'])
    assert 'cannot write to --results_dir' in one_line_error(rc, err, 1)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(mnist_root, tmp_path, monkeypatch):
    from fm_mnist.flow_matching import FlowMatching
    import fm_mnist.cli as cli
    monkeypatch.setattr(cli, 'measure_step_time', lambda *args, **kwargs: 0.01)   # no measured steps: count only training's
    real_loss, calls = FlowMatching.loss, []
    def loss_that_diverges(self, x1, *args, **kwargs):
        calls.append(1)
        loss = real_loss(self, x1, *args, **kwargs)
        return loss * float('nan') if len(calls) > 4 else loss  # epoch 1 (4 steps) is fine, epoch 2 diverges
    monkeypatch.setattr(FlowMatching, 'loss', loss_that_diverges)
    res = tmp_path / 'r'
    rc, _, err = quiet(train_main, [*TINY, '--epochs', '3', '--checkpoint_every', '1', '--data_dir', str(mnist_root),
                                    '--results_dir', str(res)])
    err = one_line_error(rc, err, 1)
    assert 'the loss became nan at epoch 2' in err and 'checkpoint_epoch_1.pt' in err
    assert (res / 'checkpoint_epoch_1.pt').is_file()
    assert not (res / 'checkpoint_epoch_2.pt').exists() and not (res / 'checkpoint_final.pt').exists()
