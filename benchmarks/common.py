"""What every benchmark shares: the flags that pick a model, a device and MNIST, the hardware description printed beside
every number, and writing results. Uses fm_mnist's public API only."""
import argparse, json, os, platform, re
from pathlib import Path

import torch

from fm_mnist.checkpoint import PRETRAINED, find_latest_checkpoint, load_flow
from fm_mnist.performance import tune_cpu_allocator
from fm_mnist.utils import get_device


def add_common_flags(p: argparse.ArgumentParser, model: bool = True, num_samples: int | None = None):
    "--device, --data_dir, --seed, --out; with `model`, --checkpoint / --pretrained [NAME] / --results_dir; --num_samples."
    if model:
        src = p.add_mutually_exclusive_group()
        src.add_argument('--checkpoint', help='a checkpoint file (default: the newest in --results_dir)')
        src.add_argument('--pretrained', nargs='?', const='unconditional', choices=list(PRETRAINED), help='a shipped model')
        p.add_argument('--results_dir', default='results')
    if num_samples is not None or model:
        p.add_argument('--num_samples', type=int, default=num_samples,
                       help=f'N (default: {num_samples})' if num_samples else 'N (default: 10000 on CUDA, else 2000)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', help='cpu, cuda, cuda:N or mps (default: CUDA, then MPS, then CPU)')
    p.add_argument('--data_dir', help='MNIST root (default: $FM_MNIST_DATA, else data/)')
    p.add_argument('--out', default='benchmarks/results', help='where the JSON, markdown and plots go')


def comma_list(kind=float, lo: float | None = None, hi: float | None = None, what: str = 'values'):
    "argparse type: comma-separated numbers of `kind`, each in [lo, hi] where given, as a tuple."
    def parse(s: str) -> tuple:
        try: xs = tuple(kind(x) for x in s.split(','))
        except ValueError: raise argparse.ArgumentTypeError(f'expected comma-separated {kind.__name__}s, got {s!r}') from None
        if not all((lo is None or x >= lo) and (hi is None or x <= hi) for x in xs):
            bound = f'in [{lo}, {hi}]' if lo is not None and hi is not None else f'at least {lo}' if lo is not None else f'at most {hi}'
            raise argparse.ArgumentTypeError(f'{what} must be {bound}, got {s!r}')
        return xs
    return parse


def setup(args) -> torch.device:
    "Process-wide settings every benchmark uses (the allocator setting of the scripts) and the device."
    tune_cpu_allocator()
    return get_device(args.device)


def model_from_args(args, device):
    "`(flow, description)` of the model the flags name."
    if args.pretrained: return load_flow(args.pretrained, device), f'the shipped {args.pretrained} model'
    path = Path(args.checkpoint) if args.checkpoint else find_latest_checkpoint(args.results_dir)
    if path is None: raise SystemExit(f'no checkpoint in {args.results_dir}/: pass --checkpoint or --pretrained')
    return load_flow(path, device), str(path)


def num_samples(args, device) -> int:
    return args.num_samples or (10_000 if device.type == 'cuda' else 2_000)


def cpu_name() -> str:
    "The processor's model name (from /proc/cpuinfo on Linux), else what `platform` knows."
    try:
        m = re.search(r'^model name\s*:\s*(.+)$', Path('/proc/cpuinfo').read_text(), re.M)
        if m: return m.group(1).strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def hardware(device) -> str:
    "One line: the device that computed, with the versions that matter."
    device = torch.device(device)
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else \
        f'{cpu_name()} ({platform.machine()}), {torch.get_num_threads()} threads, {os.cpu_count()} cores'
    return f'{where}; torch {torch.__version__}'


def write(out: str | Path, name: str, data: dict, markdown: str | None = None) -> Path:
    "Write `name`.json (and `name`.md) into `out`; returns the JSON path."
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    (out / f'{name}.json').write_text(json.dumps(data, indent=2))
    if markdown is not None: (out / f'{name}.md').write_text(markdown.rstrip() + '\n')
    return out / f'{name}.json'
