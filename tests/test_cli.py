"End to end: the training and generation scripts on real MNIST with a tiny model, their files, resume, and bad input."
import os, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fm_mnist.cli import generate_main, train_main
from fm_mnist.training import CHECKPOINT_VERSION, pretrained_path

ROOT = Path(__file__).resolve().parent.parent
TINY = ['--base_channels', '8', '--time_emb_dim', '16', '--batch_size', '32', '--max_steps_per_epoch', '4',
        '--num_samples', '6', '--num_steps', '3', '--device', 'cpu', '--no_progress']


def run(args, cwd=ROOT):
    "Run a command line; returns (exit code, stdout, stderr)."
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def script(name):
    return [sys.executable, str(ROOT / name)]


def weights(path):
    return torch.load(path, weights_only=True, map_location='cpu')['model_state']


@pytest.fixture(scope='module')
def trained(tmp_path_factory, mnist_root):
    "One short training run through `python train_main.py`, shared by the tests that read its files."
    res = tmp_path_factory.mktemp('run') / 'results'
    rc, out, err = run(script('train_main.py') + TINY + ['--epochs', '4', '--sample_every', '2', '--checkpoint_every', '2',
                                                         '--data_dir', str(mnist_root), '--results_dir', str(res)])
    assert rc == 0, err
    return res


def test_training_writes_the_seed_layout(trained):
    res = trained
    for e in (2, 4):
        assert (res / f'checkpoint_epoch_{e}.pt').is_file()
        assert Image.open(res / f'samples_epoch_{e}.png').size == (6 * 30 + 2, 30 + 2)  # 6 samples fit one row of 8
        assert len(list((res / 'individual_samples' / f'epoch_{e}').glob('*.png'))) == 6
    assert not (res / 'checkpoint_epoch_1.pt').exists() and not (res / 'samples_epoch_1.png').exists()
    final = res / 'final_samples'
    assert Image.open(final / 'final_samples_grid.png').mode == 'L'
    pngs = sorted((final / 'individual').glob('*.png'))
    assert len(pngs) == 6 and Image.open(pngs[0]).size == (28, 28)
    arr = np.load(final / 'final_samples.npy')
    assert arr.shape == (6, 1, 28, 28) and arr.dtype == np.float32 and arr.min() >= -1 and arr.max() <= 1


def test_checkpoint_contents(trained):
    ckpt = torch.load(trained / 'checkpoint_final.pt', weights_only=True, map_location='cpu')
    assert ckpt['format'] == 'fm_mnist' and ckpt['format_version'] == CHECKPOINT_VERSION
    assert ckpt['epoch'] == 4 and ckpt['step'] == 16
    assert ckpt['model_config']['base_channels'] == 8 and ckpt['train_config']['batch_size'] == 32
    for key in ('model_state', 'ema_state', 'optimizer_state', 'scheduler_state', 'scaler_state', 'rng_state'):
        assert ckpt[key] is not None, key
    assert isinstance(ckpt['rng_state']['torch'], torch.Tensor)
    assert ckpt['loss_history'].shape == (16,) and torch.isfinite(ckpt['loss_history']).all()
    assert not list(trained.glob('.*.tmp'))  # atomic writes leave no temporary files


def test_generate_from_newest_checkpoint_with_every_flag(trained, tmp_path):
    out = tmp_path / 'gen'
    rc, stdout, err = run(script('generate_samples.py') + [
        '--results_dir', str(trained), '--num_samples', '10', '--num_steps', '5', '--output_dir', str(out),
        '--save_individual', '--save_numpy', '--seed', '3', '--device', 'cpu', '--batch_size', '4'])
    assert rc == 0, err
    assert 'checkpoint_final.pt' in stdout
    assert Image.open(out / 'generated_samples_grid.png').size == (8 * 30 + 2, 2 * 30 + 2)
    assert len(list((out / 'individual').glob('*.png'))) == 10
    a = np.load(out / 'generated_samples.npy')
    assert a.shape == (10, 1, 28, 28) and a.dtype == np.float32
    # same seed, same samples, whatever the batch size
    assert generate_main(['--checkpoint', str(trained / 'checkpoint_epoch_4.pt'), '--num_samples', '10', '--num_steps', '5',
                          '--output_dir', str(tmp_path / 'again'), '--save_numpy', '--seed', '3']) == 0
    np.testing.assert_allclose(np.load(tmp_path / 'again' / 'generated_samples.npy'), a, atol=1e-5)


def test_default_generation_reads_results_and_writes_there(trained, tmp_path):
    shutil.copytree(trained, tmp_path / 'results')
    rc, stdout, err = run(script('generate_samples.py') + ['--num_samples', '4', '--num_steps', '2'], cwd=tmp_path)
    assert rc == 0, err
    assert (tmp_path / 'results' / 'generated_samples' / 'generated_samples_grid.png').is_file()
    assert not (tmp_path / 'results' / 'generated_samples' / 'individual').exists()


def test_newest_checkpoint_is_highest_epoch_without_final(trained, tmp_path):
    res = tmp_path / 'results'
    res.mkdir()
    for e in (2, 4): shutil.copy(trained / f'checkpoint_epoch_{e}.pt', res)
    rc, stdout, err = run(script('generate_samples.py') + ['--results_dir', str(res), '--num_samples', '2', '--num_steps', '2',
                                                           '--output_dir', str(tmp_path / 'o')])
    assert rc == 0 and 'checkpoint_epoch_4.pt' in stdout, err


@pytest.mark.skipif(not pretrained_path().is_file(), reason='the shipped model is not in this tree')
def test_generate_with_the_shipped_model(tmp_path):
    rc, stdout, err = run(['fm-generate', '--pretrained', '--num_samples', '8', '--num_steps', '8', '--output_dir', str(tmp_path),
                           '--save_numpy', '--seed', '0'])
    assert rc == 0, err
    assert np.load(tmp_path / 'generated_samples.npy').shape == (8, 1, 28, 28)


def test_console_scripts_are_installed():
    for cmd in (['fm-train'], ['fm-generate'], ['fm-evaluate'], [sys.executable, '-m', 'fm_mnist', 'evaluate']):
        rc, out, err = run(cmd + ['--help'])
        assert rc == 0 and '--device' in out, err
    rc, out, err = run([sys.executable, '-m', 'fm_mnist', 'generate', '--num_steps', '0'])
    assert _one_line_error(rc, err, 2)


def test_same_seed_same_weights(mnist_root, tmp_path):
    args = TINY + ['--epochs', '2', '--sample_every', '99', '--checkpoint_every', '99', '--data_dir', str(mnist_root)]
    for name in ('a', 'b'): assert train_main(args + ['--results_dir', str(tmp_path / name)]) == 0
    wa, wb = weights(tmp_path / 'a' / 'checkpoint_final.pt'), weights(tmp_path / 'b' / 'checkpoint_final.pt')
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_killed_then_resumed_equals_uninterrupted(mnist_root, tmp_path):
    args = TINY + ['--epochs', '8', '--max_steps_per_epoch', '10', '--sample_every', '99', '--checkpoint_every', '1',
                   '--data_dir', str(mnist_root)]
    assert train_main(args + ['--results_dir', str(tmp_path / 'full')]) == 0
    killed = tmp_path / 'killed'
    proc = subprocess.Popen(script('train_main.py') + args + ['--results_dir', str(killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / 'checkpoint_epoch_2.pt').exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / 'checkpoint_final.pt').exists(), 'the run finished before it could be killed'
    rc, out, err = run(script('train_main.py') + ['--resume', '--results_dir', str(killed), '--data_dir', str(mnist_root),
                                                  '--sample_every', '99', '--checkpoint_every', '1', '--num_samples', '2',
                                                  '--num_steps', '2', '--no_progress'])
    assert rc == 0, err
    assert 'resuming from' in out
    wf, wk = weights(tmp_path / 'full' / 'checkpoint_final.pt'), weights(killed / 'checkpoint_final.pt')
    assert all(torch.equal(wf[k], wk[k]) for k in wf)
    lf = torch.load(tmp_path / 'full' / 'checkpoint_final.pt', weights_only=True)['loss_history']
    assert torch.equal(lf, torch.load(killed / 'checkpoint_final.pt', weights_only=True)['loss_history'])


def _one_line_error(rc, err, code):
    assert rc == code, err
    assert 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize('argv', [['--epochs', '0'], ['--epochs', '-1'], ['--batch_size', '0'], ['--lr', 'nan'],
                                  ['--time_emb_dim', '15'], ['--preset', 'tpu']])
def test_invalid_training_flags(argv, tmp_path, capsys):
    rc = train_main(argv + ['--results_dir', str(tmp_path / 'results'), '--no_progress'])
    _one_line_error(rc, capsys.readouterr().err, 2)
    assert not (tmp_path / 'results').exists()  # nothing is written for an invalid flag


@pytest.mark.parametrize('argv', [['--num_samples', '0'], ['--num_steps', '-5'], ['--batch_size', '0'],
                                  ['--checkpoint', 'a.pt', '--pretrained']])
def test_invalid_generation_flags(argv, capsys):
    _one_line_error(generate_main(argv), capsys.readouterr().err, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_absent_device_scripts():
    for cmd in (script('train_main.py'), script('generate_samples.py')):
        rc, out, err = run(cmd + ['--device', 'cuda'])
        assert 'CUDA is not available' in _one_line_error(rc, err, 2)


def test_no_checkpoint_yet(tmp_path):
    rc, out, err = run(script('generate_samples.py'), cwd=tmp_path)
    assert 'train first with' in _one_line_error(rc, err, 1)
    rc, out, err = run(script('train_main.py') + ['--resume', '--results_dir', str(tmp_path / 'r'), '--data_dir', str(tmp_path / 'no_data')])
    assert not (tmp_path / 'no_data').exists()  # the missing checkpoint is reported before any data is read
    assert _one_line_error(rc, err, 1)


def test_corrupt_and_foreign_checkpoints(tmp_path, trained, capsys):
    (tmp_path / 'corrupt.pt').write_bytes(b'\x80\x02garbage')
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes((trained / 'checkpoint_final.pt').read_bytes()[:5000])
    torch.save({'state_dict': {'w': torch.zeros(2)}}, tmp_path / 'foreign.pt')
    for name, expected in (('corrupt', 'not a readable checkpoint'), ('truncated', 'not a readable checkpoint'),
                           ('foreign', 'not an fm_mnist checkpoint'), ('missing', 'no checkpoint file')):
        rc = generate_main(['--checkpoint', str(tmp_path / f'{name}.pt'), '--output_dir', str(tmp_path / 'o')])
        assert expected in _one_line_error(rc, capsys.readouterr().err, 1)


def test_absent_dataset(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.mnist as mnist
    def no_network(*args, **kwargs): raise OSError('network unreachable')
    monkeypatch.setattr(mnist, 'download_and_extract_archive', no_network)
    rc = train_main(['--data_dir', str(tmp_path / 'nothing'), '--results_dir', str(tmp_path / 'r'), '--no_progress'])
    assert 'train-images-idx3-ubyte' in _one_line_error(rc, capsys.readouterr().err, 1)


def test_unwritable_output(tmp_path, trained, capsys):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    rc = generate_main(['--checkpoint', str(trained / 'checkpoint_final.pt'), '--output_dir', str(blocker / 'out'),
                        '--num_samples', '2', '--num_steps', '2'])
    assert 'cannot write to --output_dir' in _one_line_error(rc, capsys.readouterr().err, 1)
    rc = train_main(['--results_dir', str(blocker / 'r'), '--no_progress'])
    assert 'cannot write to --results_dir' in _one_line_error(rc, capsys.readouterr().err, 1)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(mnist_root, tmp_path, monkeypatch, capsys):
    from fm_mnist.flow_matching import FlowMatching
    real_loss, calls = FlowMatching.loss, []
    def loss_that_diverges(self, x1, *args, **kwargs):
        calls.append(1)
        loss = real_loss(self, x1, *args, **kwargs)
        return loss * float('nan') if len(calls) > 6 else loss  # epoch 1 (4 steps) is fine, epoch 2 diverges
    monkeypatch.setattr(FlowMatching, 'loss', loss_that_diverges)
    res = tmp_path / 'r'
    rc = train_main(TINY + ['--epochs', '3', '--checkpoint_every', '1', '--data_dir', str(mnist_root), '--results_dir', str(res)])
    err = _one_line_error(rc, capsys.readouterr().err, 1)
    assert 'the loss became nan at epoch 2' in err and 'checkpoint_epoch_1.pt' in err
    assert (res / 'checkpoint_epoch_1.pt').is_file()
    assert not (res / 'checkpoint_epoch_2.pt').exists() and not (res / 'checkpoint_final.pt').exists()
    assert torch.load(res / 'checkpoint_epoch_1.pt', weights_only=True)['epoch'] == 1
