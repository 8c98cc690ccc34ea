"The training loop's pieces: batches, schedule, EMA, checkpoints, and the shipped model."
import pytest
import torch

from fm_mnist import ModelConfig, TrainConfig, PRESETS, new_train_state, train, load_pretrained, FlowMatching
from fm_mnist.training import (CheckpointError, epoch_batches, export_for_sampling, flow_from_checkpoint, load_checkpoint,
                               lr_factor, pretrained_path, save_checkpoint)

TINY_MODEL = ModelConfig(base_channels=8, time_emb_dim=16)


def test_epoch_batches_cover_a_permutation():
    images = torch.arange(100.).reshape(100, 1, 1, 1)
    seen = torch.cat([b.flatten() for b in epoch_batches(images, 10, seed=3, epoch=1)])
    assert sorted(seen.tolist()) == list(range(100))
    assert not torch.equal(seen, torch.arange(100.))


def test_lr_schedule_shape():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)


def test_train_records_losses_and_calls_back():
    images = torch.rand(64, 1, 28, 28) * 2 - 1
    state = new_train_state(TINY_MODEL, TrainConfig(epochs=2, batch_size=16, warmup_steps=1, log_every=3), device='cpu')
    seen = []
    train(state, images, on_epoch_end=lambda st: seen.append((st.epoch, st.step)), progress=False)
    assert seen == [(1, 4), (2, 8)]
    assert len(state.losses) == 8 and all(torch.isfinite(torch.tensor(state.losses)))
    assert state.ema is not None and state.ema.num_updates == 8


def test_callbacks_do_not_change_training_randomness():
    images = torch.rand(64, 1, 28, 28) * 2 - 1
    def run(callback):
        st = new_train_state(TINY_MODEL, TrainConfig(epochs=2, batch_size=16, warmup_steps=1), device='cpu')
        return train(st, images, on_epoch_end=callback, progress=False).losses
    assert run(None) == run(lambda st: torch.randn(1000))


def test_presets():
    assert set(PRESETS) == {'cpu', 'gpu'}
    gpu_model, gpu_train = PRESETS['gpu']
    assert (gpu_model.base_channels, gpu_model.time_emb_dim, gpu_train.epochs, gpu_train.batch_size) == (64, 128, 50, 128)
    assert PRESETS['cpu'][0].base_channels < gpu_model.base_channels


def test_export_for_sampling_keeps_ema_weights(tmp_path):
    images = torch.rand(32, 1, 28, 28) * 2 - 1
    state = train(new_train_state(TINY_MODEL, TrainConfig(epochs=1, batch_size=16, warmup_steps=1), device='cpu'), images,
                  progress=False)
    full = save_checkpoint(state, tmp_path / 'full.pt')
    slim = export_for_sampling(full, tmp_path / 'slim.pt')
    assert slim.stat().st_size < full.stat().st_size
    ckpt = load_checkpoint(slim)
    assert ckpt['ema_state'] is None and 'optimizer_state' not in ckpt
    a, b = flow_from_checkpoint(full, device='cpu'), flow_from_checkpoint(slim, device='cpu')
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_mismatched_weights_are_a_checkpoint_error(tmp_path):
    images = torch.rand(32, 1, 28, 28) * 2 - 1
    state = train(new_train_state(TINY_MODEL, TrainConfig(epochs=1, batch_size=16), device='cpu'), images, progress=False)
    ckpt = state.checkpoint()
    ckpt['model_config']['base_channels'] = 16
    ckpt['ema_state'] = None
    with pytest.raises(CheckpointError, match='do not match'):
        flow_from_checkpoint(ckpt, device='cpu')


@pytest.mark.skipif(not pretrained_path().is_file(), reason='the shipped model is not in this tree')
def test_shipped_model_is_small_and_samples():
    assert pretrained_path().stat().st_size < 5_000_000
    flow = load_pretrained(device='cpu')
    assert isinstance(flow, FlowMatching)
    s = flow.sample(num_samples=4, num_steps=4, seed=0)
    assert s.shape == (4, 1, 28, 28) and s.std() > 0.1  # not noise-free blanks
