"The training loop's pieces: batches, the run's length and schedule, EMA, time budgets, exact resumption, and GPU-path state."
import copy
import math
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
import torch

from fm_mnist.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from fm_mnist.config import ModelConfig, TrainConfig
from fm_mnist.training import (EMA, epoch_batches, epoch_indices, lr_factor, measure_step_time, new_train_state,
                               plan_steps, resume_train_state, run_steps, steps_per_epoch, train, warmup_length)

TINY_MODEL = ModelConfig(base_channels=8, time_emb_dim=16)
TINY_TRAIN = TrainConfig(epochs=2, batch_size=16, max_steps_per_epoch=3)
IMAGES = torch.rand(200, 1, 28, 28) * 2 - 1


def weights(state): return torch.cat([p.detach().flatten() for p in state.flow.model.parameters()])


def test_epoch_batches_cover_a_permutation_and_are_one_copy():
    images = torch.arange(100.).reshape(100, 1, 1, 1)
    seen = torch.cat([b.flatten() for b in epoch_batches(images, 10, seed=3, epoch=1)])
    assert sorted(seen.tolist()) == list(range(100)) and not torch.equal(seen, torch.arange(100.))
    idx = list(epoch_indices(100, 10, seed=3, epoch=1))
    assert len({i.untyped_storage().data_ptr() for i in idx}) == 1   # slices of one tensor: no host copy per step


def test_no_host_copy_per_step_in_the_loop(monkeypatch):
    "The loop copies the epoch's permutation to the device once per epoch, never a batch of indices per step."
    import fm_mnist.training as training
    copies = []
    real = training.epoch_indices
    def counting(*args, **kwargs):
        for i, idx in enumerate(real(*args, **kwargs)):
            copies.append(idx.untyped_storage().data_ptr())
            yield idx
    monkeypatch.setattr(training, 'epoch_indices', counting)
    train(new_train_state(TINY_MODEL, TINY_TRAIN, len(IMAGES), device='cpu'), IMAGES, progress=False)
    assert len(copies) == 6                              # 2 epochs of 3 steps
    assert len(set(copies[:3])) == 1 and len(set(copies[3:])) == 1   # each epoch's batches: slices of one index tensor


def test_run_length_comes_from_the_data_given():
    tc = TrainConfig(epochs=3, batch_size=100)
    assert steps_per_epoch(60_000, tc) == 600 and steps_per_epoch(1_000, tc) == 10
    assert run_steps(tc, 10) == 30 and run_steps(replace(tc, max_steps=7), 10) == 7
    state = new_train_state(TINY_MODEL, replace(TINY_TRAIN, max_steps_per_epoch=None, batch_size=20), 100, device='cpu')
    assert state.steps_per_epoch == 5 and state.total_steps == 10
    with pytest.raises(ValueError, match='planned for 5 steps per epoch'): train(state, IMAGES, progress=False)


def test_the_schedule_scales_with_the_run():
    assert warmup_length(TrainConfig(), 468) == 23 and warmup_length(TrainConfig(), 100_000) == 500
    assert warmup_length(replace(TrainConfig(), warmup_fraction=1.0, warmup_steps=200), 468) == 200   # version 1's warm-up
    assert lr_factor(0, 10, 100) == pytest.approx(0.1) and lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5) and lr_factor(100, 10, 100) == pytest.approx(0.0)

def test_the_ema_half_life_is_a_fraction_of_the_steps_so_far():
    model = torch.nn.Linear(2, 2)
    for n in (1_000, 100_000):                                                # a tenth of the steps so far, at every step
        ema = EMA(model, halflife_fraction=0.1); ema.num_updates = n - 1
        assert math.log(2) / -math.log(ema.current_decay()) == pytest.approx(0.1 * n, rel=0.02)
    default = EMA(model, halflife_fraction=TrainConfig().ema_halflife_fraction)
    for n in range(5): assert default.current_decay() == pytest.approx((2 + n) / (11 + n)); default.update(model)   # the ramp
    fixed = EMA(model, decay=0.999); fixed.num_updates = 50_000
    assert fixed.current_decay() == 0.999                                     # a fixed decay, once the ramp reaches it


def test_ema_matches_a_loop_over_tensors():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(1, 4):
        with torch.no_grad():
            for p in model.parameters(): p.add_(torch.randn_like(p))
        model.train()(torch.randn(8, 4))
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            ref[k] = ref[k] + (v - ref[k]) * (1 - d) if v.dtype.is_floating_point else v.clone()
    for k in ref: torch.testing.assert_close(ema.shadow[k], ref[k])


def test_measuring_the_speed_changes_nothing():
    plain = train(new_train_state(TINY_MODEL, TINY_TRAIN, len(IMAGES), device='cpu'), IMAGES, progress=False)
    measured = new_train_state(TINY_MODEL, TINY_TRAIN, len(IMAGES), device='cpu')
    assert measure_step_time(measured, IMAGES, min_seconds=0.0) > 0
    train(measured, IMAGES, progress=False)
    assert torch.equal(weights(plain), weights(measured)) and plain.losses == measured.losses


def test_a_time_budget_fixes_the_length_and_the_schedule():
    state = new_train_state(TINY_MODEL, replace(TINY_TRAIN, minutes=1.0), len(IMAGES), device='cpu')
    assert plan_steps(state, seconds=10.0, seconds_per_step=2.0) == 5
    assert state.total_steps == 5 and state.total_epochs == 2
    train(state, IMAGES, progress=False)
    assert state.step == 5 and state.optimizer.param_groups[0]['lr'] == pytest.approx(0.0, abs=1e-12)  # the cosine ended


@pytest.mark.parametrize('max_steps', [None, 5])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, max_steps):
    tc = replace(TINY_TRAIN, max_steps=max_steps)
    full = train(new_train_state(TINY_MODEL, tc, len(IMAGES), device='cpu'), IMAGES, progress=False)
    st = new_train_state(TINY_MODEL, tc, len(IMAGES), device='cpu')
    def stop(s):
        save_checkpoint(s.checkpoint(), tmp_path / 'c.pt'); raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): train(st, IMAGES, on_epoch_end=stop, progress=False)
    resumed = resume_train_state(read_checkpoint(tmp_path / 'c.pt', for_resume=True), len(IMAGES), device='cpu')
    assert resumed.total_steps == full.total_steps   # the plan travels in the checkpoint
    train(resumed, IMAGES, progress=False)
    assert torch.equal(weights(full), weights(resumed)) and full.losses == resumed.losses


def test_callbacks_do_not_change_training_randomness():
    def run(**cb):
        st = new_train_state(TINY_MODEL, TINY_TRAIN, len(IMAGES), device='cpu')
        return train(st, IMAGES, progress=False, **cb).losses
    assert run() == run(on_epoch_end=lambda s: torch.randn(1000), every_steps=(2, lambda s: torch.rand(10)))


def test_every_steps_calls_back_on_time():
    seen = []
    st = new_train_state(TINY_MODEL, TINY_TRAIN, len(IMAGES), device='cpu')
    train(st, IMAGES, every_steps=(2, lambda s: seen.append(s.step)), on_epoch_end=lambda s: seen.append(('epoch', s.epoch)),
          progress=False)
    assert seen == [2, ('epoch', 1), 4, ('epoch', 2)]   # not at the last step: the run's end has its own samples


def test_resume_rejects_other_data_and_budget_extension(tmp_path):
    st = train(new_train_state(TINY_MODEL, replace(TINY_TRAIN, max_steps=4), len(IMAGES), device='cpu'), IMAGES, progress=False)
    ckpt = read_checkpoint(save_checkpoint(st.checkpoint(), tmp_path / 'c.pt'), for_resume=True)
    with pytest.raises(CheckpointError, match='steps per epoch'): resume_train_state(ckpt, 40, device='cpu')
    with pytest.raises(ValueError, match='time-budgeted'): resume_train_state(ckpt, len(IMAGES), device='cpu', epochs=5)


# The GPU path's state, checked on the CPU


def test_checkpoint_keeps_only_the_training_devices_generator():
    st = new_train_state(TINY_MODEL, TINY_TRAIN, len(IMAGES), device='cpu')
    assert set(st.checkpoint()['rng_state']) == {'torch'}          # a CPU run saves no CUDA generator at all


def test_float16_resume_from_a_checkpoint_without_scaler_state(tmp_path):
    st = train(new_train_state(TINY_MODEL, TINY_TRAIN, len(IMAGES), device='cpu'), IMAGES, progress=False)
    ckpt = read_checkpoint(save_checkpoint(st.checkpoint(), tmp_path / 'c.pt'), for_resume=True)
    assert ckpt['scaler_state'] == {}                               # a CPU (or bfloat16) run's scaler is disabled
    ckpt['_train_config'] = replace(ckpt['_train_config'], epochs=3)
    with mock.patch('fm_mnist.training.amp_settings', lambda d: (True, torch.float16)):   # as on a float16-only GPU
        resumed = resume_train_state(ckpt, len(IMAGES), device='cpu')
    assert resumed.scaler.is_enabled() and resumed.step == st.step


def test_resume_into_channels_last_matches_optimizer_layouts(tmp_path):
    st = train(new_train_state(TINY_MODEL, TINY_TRAIN, len(IMAGES), device='cpu'), IMAGES, progress=False)
    ckpt = read_checkpoint(save_checkpoint(st.checkpoint(), tmp_path / 'c.pt'), for_resume=True)
    resumed = resume_train_state(ckpt, len(IMAGES), device='cpu', epochs=3, channels_last=True)   # as on CUDA
    for p in resumed.flow.model.parameters():
        for k, v in resumed.optimizer.state[p].items():
            if torch.is_tensor(v) and v.shape == p.shape: assert v.stride() == p.stride(), k
    conv = resumed.flow.model.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    train(resumed, IMAGES, progress=False)
    assert resumed.step == 9
