"""Checkpoints trust nothing they read: every kind of bad file is one line and a non-zero exit from the scripts, and no model
is built from a config that was not validated. Old files load through the format's migration."""
import copy
from dataclasses import asdict

import pytest
import torch

from conftest import TINY, quiet
from fm_mnist.checkpoint import (CHECKPOINT_VERSION, PRETRAINED, CheckpointError, atomic_save, average_for_sampling,
                                 export_for_sampling, load_flow, pretrained_path, read_checkpoint, validate)
from fm_mnist.cli import generate_main, train_main
from fm_mnist.config import ModelConfig, TrainConfig

MC = ModelConfig(base_channels=8, time_emb_dim=16)


@pytest.fixture
def good():
    return {'format': 'fm_mnist', 'format_version': CHECKPOINT_VERSION, 'epoch': 1, 'step': 2, 'model_config': asdict(MC),
            'train_config': asdict(TrainConfig()), 'model_state': MC.build().state_dict(), 'ema_state': None,
            'loss_history': torch.ones(2)}


def bad_variants(good):
    "One file per class of problem: (name, checkpoint dict, what the error must say)."
    def changed(**kw): c = copy.deepcopy(good); c.update(kw); return c
    nan = copy.deepcopy(good['model_state']); nan['conv_out.bias'][0] = float('nan')
    inf_ema = changed(ema_state={'decay': 0.9, 'num_updates': 1, 'shadow': {k: v.clone() for k, v in good['model_state'].items()}})
    inf_ema['ema_state']['shadow']['conv_in.bias'][0] = float('inf')
    return [
        ('missing key', {k: v for k, v in good.items() if k != 'model_state'}, "lacks 'model_state'"),
        ('wrong type', changed(model_config='base_channels=8'), "'model_config' must be of type dict"),
        ('bool as int', changed(epoch=True), "'epoch' must be of type int"),
        ('unknown config field', changed(model_config={**asdict(MC), 'wings': 2}), 'unknown ModelConfig fields'),
        ('absurd size', changed(model_config={**asdict(MC), 'base_channels': 1 << 24}), 'ModelConfig.base_channels'),
        ('absurd depth', changed(model_config={**asdict(MC), 'channel_mults': [1] * 50}), 'ModelConfig.channel_mults'),
        ('impossible training value', changed(train_config={**asdict(TrainConfig()), 'batch_size': -5}), 'TrainConfig.batch_size'),
        ('weights vs config', changed(model_config={**asdict(MC), 'base_channels': 16}), 'match its model config'),
        ('a weight too many', changed(model_state={**good['model_state'], 'extra.weight': torch.zeros(1)}), 'has unexpected extra.weight'),
        ('EMA without weights', changed(ema_state={'decay': 0.9, 'num_updates': 3}), "'ema_state' must be"),
        ('EMA count not a number', changed(ema_state={'decay': 0.9, 'num_updates': 'x', 'shadow': good['model_state']}), "'ema_state' must be"),
        ('number beyond float', changed(train_config={**asdict(TrainConfig()), 'lr': 10**400}), 'invalid config'),
        ('not tensors', changed(model_state={'conv_in.weight': [1, 2]}), 'other than named tensors'),
        ('NaN weights', changed(model_state=nan), 'non-finite'),
        ('inf EMA weights', inf_ema, 'ema_state has non-finite'),
        ('future version', changed(format_version=CHECKPOINT_VERSION + 1), 'upgrade fm_mnist'),
        ('foreign file', {'state_dict': {'w': torch.zeros(2)}}, 'not an fm_mnist checkpoint'),
    ]


def test_every_kind_of_bad_checkpoint_is_one_line_and_exit_1(good, tmp_path):
    for name, ckpt, needle in bad_variants(good):
        path = atomic_save(ckpt, tmp_path / 'bad.pt')
        with pytest.raises(CheckpointError, match=needle.replace('(', r'\(')):
            load_flow(path)
        rc, out, err = quiet(generate_main, ['--checkpoint', str(path), '--output_dir', str(tmp_path / 'o'), '--num_steps', '1'])
        assert rc == 1 and needle in err and len(err.strip().splitlines()) == 1 and 'Traceback' not in err, (name, err)
        assert not (tmp_path / 'o').exists(), name   # nothing written


def test_no_model_is_built_from_an_unvalidated_config(good, tmp_path, monkeypatch):
    built = []
    real_build = ModelConfig.build
    monkeypatch.setattr(ModelConfig, 'build', lambda self: built.append(self) or real_build(self))
    path = atomic_save({**good, 'model_config': {**asdict(MC), 'base_channels': 1 << 24}}, tmp_path / 'bomb.pt')
    with pytest.raises(CheckpointError): load_flow(path)
    assert built == []


def test_unreadable_files(tmp_path, trained):
    (tmp_path / 'corrupt.pt').write_bytes(b'\x80\x02garbage')
    (tmp_path / 'truncated.pt').write_bytes((trained / 'checkpoint_final.pt').read_bytes()[:5000])
    for name, needle in (('corrupt', 'not a readable checkpoint'), ('truncated', 'not a readable checkpoint'),
                         ('missing', 'no checkpoint file')):
        rc, _, err = quiet(generate_main, ['--checkpoint', str(tmp_path / f'{name}.pt'), '--output_dir', str(tmp_path / 'o')])
        assert rc == 1 and needle in err and len(err.strip().splitlines()) == 1


def test_a_sampling_export_cannot_resume(trained, tmp_path, mnist_root):
    slim = export_for_sampling(trained / 'checkpoint_final.pt', tmp_path / 'slim.pt')
    assert slim.stat().st_size < (trained / 'checkpoint_final.pt').stat().st_size
    a, b = load_flow(trained / 'checkpoint_final.pt'), load_flow(slim)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()): assert torch.equal(va, vb), k
    rc, _, err = quiet(train_main, ['--resume', str(slim), '--epochs', '9', '--data_dir', str(mnist_root), '--no_progress',
                                    '--results_dir', str(tmp_path / 'r')])
    assert rc == 1 and 'sampling-only export' in err and len(err.strip().splitlines()) == 1


def test_resume_checks_the_training_state(trained, tmp_path, mnist_root):
    for bad in ('not a state', torch.zeros(7, dtype=torch.uint8)):   # not a tensor; a generator state of the wrong size
        ckpt = torch.load(trained / 'checkpoint_final.pt', weights_only=True)
        ckpt['rng_state'] = {'torch': bad}
        path = atomic_save(ckpt, tmp_path / 'rng.pt')
        rc, _, err = quiet(train_main, ['--resume', str(path), '--epochs', '9', '--data_dir', str(mnist_root), '--no_progress',
                                        '--results_dir', str(tmp_path / 'r')])
        assert rc == 1 and 'rng_state' in err and len(err.strip().splitlines()) == 1, err
    ckpt = torch.load(trained / 'checkpoint_final.pt', weights_only=True)
    ckpt['optimizer_state']['param_groups'] = []
    path = atomic_save(ckpt, tmp_path / 'opt.pt')
    rc, _, err = quiet(train_main, ['--resume', str(path), '--epochs', '9', '--data_dir', str(mnist_root), '--no_progress',
                                    '--results_dir', str(tmp_path / 'r')])
    assert rc == 1 and 'does not fit' in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize('name', [n for n in PRETRAINED if pretrained_path(n).is_file()])
def test_shipped_models_load_and_are_small(name):
    assert pretrained_path(name).stat().st_size < 5_000_000
    flow = load_flow(name, device='cpu')
    x = flow.sample(num_samples=2, num_steps=2, seed=0)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()


def test_version_1_files_migrate(good):
    v1 = copy.deepcopy(good)
    v1['format_version'] = 1
    for k in ('time_sampling', 'warmup_fraction', 'ema_halflife_fraction', 'coupling', 'objective'): v1['train_config'].pop(k)
    for k in ('image_size', 'interval'): v1['model_config'].pop(k)
    v1['rng_state'] = {'torch': torch.get_rng_state(), 'cuda': [torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)]}
    m = validate(v1, 'v1')
    tc, mc = m['_train_config'], m['_model_config']
    assert (tc.time_sampling, tc.warmup_fraction, tc.ema_halflife_fraction, tc.coupling) == ('uniform', 1.0, None, 'independent')
    assert mc.image_size == 28 and not mc.interval and torch.equal(m['rng_state']['cuda'], torch.zeros(4, dtype=torch.uint8))


def test_atomic_save_leaves_the_old_file_on_failure(tmp_path):
    atomic_save({'a': torch.zeros(1)}, tmp_path / 'x.pt')
    class Boom:
        def __reduce__(self): raise RuntimeError('boom')
    with pytest.raises(RuntimeError): atomic_save({'a': Boom()}, tmp_path / 'x.pt')
    assert torch.equal(torch.load(tmp_path / 'x.pt', weights_only=True)['a'], torch.zeros(1))
    assert [p.name for p in tmp_path.iterdir()] == ['x.pt']


def test_the_one_step_model_says_it_was_trained_at_t_0_alone():
    tc = read_checkpoint(pretrained_path('one_step'))['_train_config']
    assert (tc.grid_share, tc.grid_times, tc.objective) == (1.0, (0.0,), 'flow_matching')


def test_averaged_weights_sample_like_any_model(good, tmp_path):
    torch.manual_seed(1)
    other = copy.deepcopy(good); other['model_state'] = MC.build().state_dict()      # another model of the same kind
    with_ema = copy.deepcopy(other)                                                  # its EMA weights are the ones averaged
    with_ema['ema_state'] = {'decay': 0.9, 'num_updates': 1, 'shadow': other['model_state']}
    with_ema['model_state'] = {k: torch.zeros_like(v) for k, v in other['model_state'].items()}
    a, b = atomic_save(good, tmp_path / 'a.pt'), atomic_save(with_ema, tmp_path / 'b.pt')
    mean = read_checkpoint(average_for_sampling([a, b], tmp_path / 'mean.pt'))
    k = 'conv_in.weight'
    assert torch.allclose(mean['model_state'][k], (good['model_state'][k] + other['model_state'][k]) / 2)
    assert mean['ema_state'] is None and load_flow(tmp_path / 'mean.pt', device='cpu').sample(2, 1, seed=0).shape == (2, 1, 28, 28)
    wider = copy.deepcopy(good); mc = ModelConfig(base_channels=16, time_emb_dim=16)
    wider.update(model_config=asdict(mc), model_state=mc.build().state_dict())
    with pytest.raises(CheckpointError, match='only models of one kind'):
        average_for_sampling([a, atomic_save(wider, tmp_path / 'wider.pt')], tmp_path / 'no.pt')
    assert not (tmp_path / 'no.pt').exists()
