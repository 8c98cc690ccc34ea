"The engineering helpers: precision choice, layouts, the allocator, and the single-process behaviour of the torchrun helpers."
from unittest import mock

import pytest
import torch

from fm_mnist.performance import (agree_on_failure, amp_settings, broadcast_from_rank0, match_optimizer_layouts,
                                  tune_cpu_allocator, use_channels_last)


def fake_bf16(native):
    return lambda including_emulation=True: native or including_emulation


def test_bfloat16_only_where_the_gpu_has_it():
    assert amp_settings(torch.device('cpu')) == (False, torch.float32)
    with mock.patch('torch.cuda.is_bf16_supported', fake_bf16(True)):
        assert amp_settings(torch.device('cuda')) == (True, torch.bfloat16)
    with mock.patch('torch.cuda.is_bf16_supported', fake_bf16(False)):     # emulated only (V100, T4): float16 + scaler
        assert amp_settings(torch.device('cuda')) == (True, torch.float16)


def test_channels_last_is_a_switch():
    assert use_channels_last(None, torch.device('cpu')) is False
    assert use_channels_last(False, torch.device('cuda')) is False and use_channels_last(True, torch.device('cpu')) is True


def test_optimizer_moments_follow_their_parameters_layout():
    conv = torch.nn.Conv2d(2, 4, 3)
    opt = torch.optim.AdamW(conv.parameters())
    conv(torch.randn(1, 2, 6, 6)).sum().backward(); opt.step()
    saved = opt.state_dict()
    conv = conv.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(conv.parameters()); opt.load_state_dict(saved)
    match_optimizer_layouts(opt)
    for k in ('exp_avg', 'exp_avg_sq'): assert opt.state[conv.weight][k].stride() == conv.weight.stride()


def test_single_process_helpers_are_transparent():
    cpu = torch.device('cpu')
    assert agree_on_failure(lambda: 3, cpu) == 3 and broadcast_from_rank0([1], cpu) == [1]
    with pytest.raises(ZeroDivisionError): agree_on_failure(lambda: 1 / 0, cpu)


def test_allocator_tuning_answers():
    assert tune_cpu_allocator() in (True, False)
