"""Training and sampling speed of a UNet configuration: images per second, parameters, FLOPs per image, peak memory.

    python benchmarks/speed.py --preset cpu
    python benchmarks/speed.py --preset gpu --device cuda [--compile] [--no-channels_last]
    python benchmarks/speed.py --model reference      # TorchCFM's MNIST UNet, trained by the same loop (needs the bench extra)

Training is timed in the library's own loop, `train()`, on real MNIST batches: every cost of a real run is inside (batch
indexing on the device, the EMA, the loss read back every `log_every` steps), after `--warmup` steps that are not timed
(with --compile, they include the compilation). Sampling is timed on Euler steps under inference mode, with the same
(compiled, if asked) network. FLOPs are counted by torch.utils.flop_counter on one forward pass (a training step costs
about three). On the CPU it also reports where the process time went during the timed steps: user time (arithmetic),
system time (the kernel: page faults, memory mapping) and minor page faults. Prints the hardware and versions.
"""
import argparse, copy, json, resource, sys, time
from dataclasses import replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import hardware
from fm_mnist.config import PRESETS
from fm_mnist.data import load_mnist_tensors
from fm_mnist.performance import configure_backends, tune_cpu_allocator
from fm_mnist.training import new_train_state, train
from fm_mnist.unet import count_parameters
from fm_mnist.utils import get_device


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


class ReferenceUNet(torch.nn.Module):
    "TorchCFM's MNIST example UNet (32 channels, one residual block, attention at 28x28 too) with fm_mnist's `(x, t)` call."
    def __init__(self):
        super().__init__()
        from torchcfm.models.unet import UNetModel
        self.net = UNetModel(dim=(1, 28, 28), num_channels=32, num_res_blocks=1)
    def forward(self, x, t, y=None): return self.net(t, x)


def timed_training(state, images, warmup: int, steps: int):
    "Seconds for `steps` steps of `train()` after `warmup` untimed ones, and the process's CPU usage over them."
    state.train_config.max_steps = warmup + steps
    state.refresh_schedule()
    marks = {}
    def mark(st):
        if marks: return   # `train` calls back at every multiple of `warmup`: the clock starts at the first
        sync(st.flow.device)
        marks['step'], marks['t0'], marks['r0'] = st.step, time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    train(state, images, every_steps=(warmup, mark), progress=False)
    sync(state.flow.device)
    assert state.step - marks['step'] == steps, (state.step, marks['step'], steps)
    return time.perf_counter() - marks['t0'], marks['r0'], resource.getrusage(resource.RUSAGE_SELF)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', choices=sorted(PRESETS), default='cpu')
    p.add_argument('--base_channels', type=int)
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--steps', type=int, default=10, help='timed training steps')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--sample_batch', type=int, default=256)
    p.add_argument('--device')
    p.add_argument('--data_dir')
    p.add_argument('--no_allocator_tuning', action='store_true')
    p.add_argument('--model', choices=['fm_mnist', 'reference'], default='fm_mnist')
    p.add_argument('--channels_last', action=argparse.BooleanOptionalAction, help='channels-last tensors (default: on CUDA only)')
    p.add_argument('--cudnn_benchmark', action=argparse.BooleanOptionalAction, default=True, help='CUDA: cuDNN autotuning')
    p.add_argument('--compile', action='store_true', help='torch.compile the model (training and sampling)')
    p.add_argument('--threads', type=int, help="torch threads (default: torch's choice)")
    p.add_argument('--json')
    args = p.parse_args(argv)
    if not args.no_allocator_tuning: tune_cpu_allocator()
    if args.threads: torch.set_num_threads(args.threads)
    device = get_device(args.device)
    configure_backends(device)
    if device.type == 'cuda': torch.backends.cudnn.benchmark = args.cudnn_benchmark
    images = load_mnist_tensors(args.data_dir, train=True)[0]
    mc, tc = PRESETS[args.preset]
    if args.base_channels: mc = replace(mc, base_channels=args.base_channels)
    tc = replace(tc, batch_size=args.batch_size, compile=args.compile, channels_last=args.channels_last, minutes=None)
    model = ReferenceUNet() if args.model == 'reference' else None
    state = new_train_state(mc, tc, len(images), device, model=model)
    model = state.flow.model
    with FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 1, 28, 28, device=device), torch.tensor([0.5], device=device))
    flops = fc.get_total_flops()

    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    t_start = time.perf_counter()
    wall, r0, r1 = timed_training(state, images, args.warmup, args.steps)
    warmup_s = time.perf_counter() - t_start - wall
    train_ips = args.steps * args.batch_size / wall

    flow = copy.copy(state.flow)
    if args.compile: flow.model = torch.compile(model)
    flow.sample(num_samples=args.sample_batch, num_steps=2, seed=0)  # warm-up (and compilation)
    sync(device); t0 = time.perf_counter()
    flow.sample(num_samples=args.sample_batch, num_steps=10, seed=0)
    sync(device); sample_ips = args.sample_batch * 10 / (time.perf_counter() - t0)  # image-evaluations per second

    peak = (f'{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB (CUDA)' if device.type == 'cuda' else
            f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (process peak RSS)')
    channels_last = model.conv_in.weight.is_contiguous(memory_format=torch.channels_last) if args.model == 'fm_mnist' else bool(args.channels_last)
    res = {'model': args.model, 'preset': args.preset if args.model == 'fm_mnist' else None,
           'base_channels': mc.base_channels if args.model == 'fm_mnist' else 32, 'parameters': count_parameters(model),
           'gflops_per_image_forward': flops / 1e9, 'batch_size': args.batch_size, 'device': str(device), 'hardware': hardware(device),
           'train_images_per_s': train_ips, 'sample_image_evals_per_s': sample_ips, 'peak_memory': peak,
           'allocator_tuned': not args.no_allocator_tuning, 'channels_last': channels_last,
           'cudnn_benchmark': args.cudnn_benchmark if device.type == 'cuda' else None, 'compiled': args.compile,
           'threads': torch.get_num_threads(), 'seconds_per_step': wall / args.steps, 'warmup_seconds': warmup_s,
           'cpu_user_s_per_step': (r1.ru_utime - r0.ru_utime) / args.steps,
           'cpu_system_s_per_step': (r1.ru_stime - r0.ru_stime) / args.steps,
           'minor_page_faults_per_step': (r1.ru_minflt - r0.ru_minflt) / args.steps}
    for k, v in res.items(): print(f'{k:>26}: {v:.3f}' if isinstance(v, float) else f'{k:>26}: {v}')
    if args.json:
        with open(args.json, 'w') as f: json.dump(res, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
