"""Training and sampling speed of a UNet configuration: images per second, parameters, FLOPs per image, peak memory.

    python benchmarks/speed.py --preset cpu
    python benchmarks/speed.py --preset gpu --device cuda [--compile]
    python benchmarks/speed.py --model reference      # TorchCFM's MNIST UNet, trained by the same loop

Training is timed on full optimiser steps of the library's own `train_step` (AdamW, clipping, EMA) after warm-up steps;
sampling is timed on Euler steps under inference mode. FLOPs are counted by torch.utils.flop_counter on one forward pass
(a training step costs about three forward passes). On the CPU it also reports where the process time went during the
timed steps: user time (arithmetic), system time (the kernel: page faults, memory mapping) and minor page faults.
Prints the hardware and versions with the numbers.
"""
import argparse, copy, json, os, platform, resource, sys, time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fm_mnist.cli import tune_cpu_allocator
from fm_mnist.config import PRESETS, TrainConfig
from fm_mnist.flow_matching import FlowMatching
from fm_mnist.training import EMA, TrainState, new_train_state, train_step, _use_amp
from fm_mnist.unet import count_parameters
from fm_mnist.utils import get_device
from dataclasses import replace


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


class ReferenceUNet(torch.nn.Module):
    "TorchCFM's MNIST example UNet (32 channels, one residual block, attention at 28x28 too) with fm_mnist's `(x, t)` call."
    def __init__(self):
        super().__init__()
        from torchcfm.models.unet import UNetModel
        self.net = UNetModel(dim=(1, 28, 28), num_channels=32, num_res_blocks=1)
    def forward(self, x, t, y=None): return self.net(t, x)


def reference_state(tc, device):
    "A TrainState around the reference UNet, built like `new_train_state` builds ours."
    state = new_train_state(PRESETS['cpu'][0], tc, device=device)
    torch.manual_seed(tc.seed)
    model = ReferenceUNet().to(device)
    state.flow = FlowMatching(model, device=device)
    state.optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr)
    state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer, lambda s: 1.0)
    state.ema = EMA(model, tc.ema_decay)
    return state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=sorted(PRESETS), default='cpu')
    p.add_argument('--base_channels', type=int)
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--steps', type=int, default=10, help='timed training steps')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--sample_batch', type=int, default=256)
    p.add_argument('--device')
    p.add_argument('--no_allocator_tuning', action='store_true')
    p.add_argument('--model', choices=['fm_mnist', 'reference'], default='fm_mnist')
    p.add_argument('--channels_last', action='store_true', help='channels-last memory format (always on for CUDA)')
    p.add_argument('--compile', action='store_true', help='torch.compile the model')
    p.add_argument('--threads', type=int, help='torch threads (default: torch\'s choice)')
    p.add_argument('--json')
    args = p.parse_args(argv)
    if not args.no_allocator_tuning: tune_cpu_allocator()
    if args.threads: torch.set_num_threads(args.threads)
    device = get_device(args.device)
    mc, tc = PRESETS[args.preset]
    if args.base_channels: mc = replace(mc, base_channels=args.base_channels)
    tc = replace(tc, batch_size=args.batch_size)
    state = new_train_state(mc, tc, device=device) if args.model == 'fm_mnist' else reference_state(tc, device)
    model = state.flow.model
    x = torch.rand(args.batch_size, 1, 28, 28, device=device) * 2 - 1
    if args.channels_last or device.type == 'cuda':
        model.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
    tflow = state.flow
    if args.compile:
        tflow = copy.copy(state.flow); tflow.model = torch.compile(model)

    with FlopCounterMode(display=False) as fc:
        model(x[:1], torch.tensor([0.5], device=device))
    flops = fc.get_total_flops()

    amp, dtype = _use_amp(device)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_start = time.perf_counter()
    for _ in range(args.warmup): train_step(state, x, amp, dtype, flow=tflow)
    sync(device); warmup_s = time.perf_counter() - t_start
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps): train_step(state, x, amp, dtype, flow=tflow)
    sync(device); wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    train_ips = args.steps * args.batch_size / wall

    flow = state.flow
    flow.sample(num_samples=args.sample_batch, num_steps=2, seed=0)  # warm-up
    sync(device); t0 = time.perf_counter()
    flow.sample(num_samples=args.sample_batch, num_steps=10, seed=0)
    sync(device); sample_ips = args.sample_batch * 10 / (time.perf_counter() - t0)  # image-evaluations per second

    peak = (f'{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB (CUDA)' if device.type == 'cuda' else
            f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (process peak RSS)')
    hw = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'
    res = {'model': args.model, 'preset': args.preset if args.model == 'fm_mnist' else None,
           'base_channels': mc.base_channels if args.model == 'fm_mnist' else 32, 'parameters': count_parameters(model),
           'gflops_per_image_forward': flops / 1e9, 'batch_size': args.batch_size, 'device': str(device), 'hardware': hw,
           'torch': torch.__version__, 'train_images_per_s': train_ips, 'sample_image_evals_per_s': sample_ips,
           'peak_memory': peak, 'allocator_tuned': not args.no_allocator_tuning, 'channels_last': args.channels_last or device.type == 'cuda',
           'compiled': args.compile, 'threads': torch.get_num_threads(), 'seconds_per_step': wall / args.steps,
           'warmup_seconds': warmup_s, 'cpu_user_s_per_step': (r1.ru_utime - r0.ru_utime) / args.steps,
           'cpu_system_s_per_step': (r1.ru_stime - r0.ru_stime) / args.steps,
           'minor_page_faults_per_step': (r1.ru_minflt - r0.ru_minflt) / args.steps}
    for k, v in res.items(): print(f'{k:>26}: {v:.3f}' if isinstance(v, float) else f'{k:>26}: {v}')
    if args.json:
        with open(args.json, 'w') as f: json.dump(res, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
