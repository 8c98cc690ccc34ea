"""Training and sampling speed of a UNet configuration: images per second, parameters, FLOPs per image, peak memory.

    python benchmarks/speed.py --preset cpu
    python benchmarks/speed.py --preset gpu --device cuda

Training is timed on full optimiser steps of the library's own `train_step` (AdamW, clipping, EMA) after warm-up steps;
sampling is timed on Euler steps under inference mode. FLOPs are counted by torch.utils.flop_counter on one forward pass
(a training step costs about three forward passes). Prints the hardware and versions with the numbers.
"""
import argparse, json, platform, resource, sys, time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fm_mnist.cli import tune_cpu_allocator
from fm_mnist.config import PRESETS, TrainConfig
from fm_mnist.training import new_train_state, train_step, _use_amp
from fm_mnist.unet import count_parameters
from fm_mnist.utils import get_device
from dataclasses import replace


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


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
    p.add_argument('--json')
    args = p.parse_args(argv)
    if not args.no_allocator_tuning: tune_cpu_allocator()
    device = get_device(args.device)
    mc, tc = PRESETS[args.preset]
    if args.base_channels: mc = replace(mc, base_channels=args.base_channels)
    tc = replace(tc, batch_size=args.batch_size)
    state = new_train_state(mc, tc, device=device)
    model = state.flow.model
    x = torch.rand(args.batch_size, 1, 28, 28, device=device) * 2 - 1

    with FlopCounterMode(display=False) as fc:
        model(x[:1], torch.tensor([0.5], device=device))
    flops = fc.get_total_flops()

    amp, dtype = _use_amp(device)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(args.warmup): train_step(state, x, amp, dtype)
    sync(device); t0 = time.perf_counter()
    for _ in range(args.steps): train_step(state, x, amp, dtype)
    sync(device); train_ips = args.steps * args.batch_size / (time.perf_counter() - t0)

    flow = state.flow
    flow.sample(num_samples=args.sample_batch, num_steps=2, seed=0)  # warm-up
    sync(device); t0 = time.perf_counter()
    flow.sample(num_samples=args.sample_batch, num_steps=10, seed=0)
    sync(device); sample_ips = args.sample_batch * 10 / (time.perf_counter() - t0)  # image-evaluations per second

    peak = (f'{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB (CUDA)' if device.type == 'cuda' else
            f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (process peak RSS)')
    hw = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'
    res = {'preset': args.preset, 'base_channels': mc.base_channels, 'parameters': count_parameters(model),
           'gflops_per_image_forward': flops / 1e9, 'batch_size': args.batch_size, 'device': str(device), 'hardware': hw,
           'torch': torch.__version__, 'train_images_per_s': train_ips, 'sample_image_evals_per_s': sample_ips,
           'peak_memory': peak, 'allocator_tuned': not args.no_allocator_tuning}
    for k, v in res.items(): print(f'{k:>26}: {v:.3f}' if isinstance(v, float) else f'{k:>26}: {v}')
    if args.json:
        with open(args.json, 'w') as f: json.dump(res, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
