"""Where a CPU training step spends its time, and what each setting changes.

    python benchmarks/profile_cpu.py                # writes benchmarks/results/profile_cpu.md and .json

Runs `benchmarks/speed.py` in a fresh process per variant (the allocator setting is process-wide), each timing full
training steps (batch 128) of the `cpu` preset and of TorchCFM's MNIST UNet trained by the same loop, and reports
seconds per step, images/s, user and system CPU time per step (system time is the kernel: page faults and memory
mapping) and minor page faults per step. Then profiles one tuned step of ours with torch.profiler and lists the
operators that take the most time. The ratio of the two models in the same loop is the architecture's share of the
speed-up over the reference recipe; the rest (loop, optimiser, coupling, allocator) is engineering.
"""
import argparse, json, subprocess, sys, tempfile
from pathlib import Path

import torch

from common import hardware

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {  # name -> speed.py flags
    'fm_mnist cpu preset, scripts\' settings (allocator tuned)': [],
    'fm_mnist cpu preset, glibc defaults': ['--no_allocator_tuning'],
    'fm_mnist cpu preset, tuned, channels-last': ['--channels_last'],
    'fm_mnist cpu preset, tuned, 1 thread': ['--threads', '1'],
    'fm_mnist gpu preset (base 64), tuned': ['--preset', 'gpu'],
    'reference UNet in the same loop, tuned': ['--model', 'reference'],
    'reference UNet in the same loop, glibc defaults': ['--model', 'reference', '--no_allocator_tuning'],
}


def run_variant(flags, steps, device):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / 'r.json'
        p = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'speed.py'), '--steps', str(steps), '--device', device,
                            '--json', str(out), *flags], cwd=ROOT, capture_output=True, text=True)
        if p.returncode: raise SystemExit(p.stderr[-2000:])
        return json.loads(out.read_text())


def top_ops(n=12, batch=128):
    "torch.profiler's table of the most expensive operators in two tuned training steps of the cpu preset."
    from fm_mnist.config import PRESETS
    from fm_mnist.performance import tune_cpu_allocator
    from fm_mnist.training import new_train_state, train_step
    tune_cpu_allocator()
    state = new_train_state(*PRESETS['cpu'], num_images=batch, device='cpu')
    x = torch.rand(batch, 1, 28, 28) * 2 - 1
    for _ in range(2): train_step(state, x, False, torch.float32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2): train_step(state, x, False, torch.float32)
    return prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=n)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default='benchmarks/results')
    p.add_argument('--variants', help='comma-separated indices into the variant list (default: all)')
    args = p.parse_args(argv)
    names = list(VARIANTS)
    if args.variants: names = [names[int(i)] for i in args.variants.split(',')]
    rows = {}
    for name in names:
        r = run_variant(VARIANTS[name], args.steps, args.device)
        rows[name] = r
        print(f"{name}: {r['seconds_per_step']:.3f} s/step, {r['train_images_per_s']:.0f} img/s, user {r['cpu_user_s_per_step']:.2f} s, "
              f"system {r['cpu_system_s_per_step']:.2f} s, {r['minor_page_faults_per_step']:.0f} page faults/step", flush=True)
    table = top_ops()
    hw = hardware(args.device)
    lines = [f'Training step, batch 128, {args.steps} timed steps after 3 warm-up steps; {hw}.', '',
             '| variant | params | GFLOPs/img (fwd) | s/step | img/s | user s/step | system s/step | system share | page faults/step |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for name, r in rows.items():
        u, s_ = r['cpu_user_s_per_step'], r['cpu_system_s_per_step']
        lines.append(f"| {name} | {r['parameters']:,} | {r['gflops_per_image_forward']:.3f} | {r['seconds_per_step']:.3f} | "
                     f"{r['train_images_per_s']:.0f} | {u:.2f} | {s_:.2f} | {s_ / max(u + s_, 1e-9):.0%} | {r['minor_page_faults_per_step']:,.0f} |")
    lines += ['', 'Most expensive operators, two tuned training steps of the cpu preset (torch.profiler, self CPU time):', '', '```', table, '```']
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / 'profile_cpu.md').write_text('\n'.join(lines) + '\n')
    (out / 'profile_cpu.json').write_text(json.dumps({'hardware': hw, 'variants': rows}, indent=2))
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
