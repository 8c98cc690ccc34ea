"""Sample quality against the number of function evaluations (NFE), for every solver fm_mnist has.

    python benchmarks/quality_vs_nfe.py --pretrained --data_dir <MNIST root>
    python benchmarks/quality_vs_nfe.py --checkpoint results/checkpoint_final.pt --num_samples 10000 --device cuda

NFE counts model evaluations: steps times evaluations per step. Every cell uses the same N, the same starting noise
(seed) and the same evaluator; the real-data floor at that N is printed beside the table. Writes quality_vs_nfe.md,
.json and .png into --out.
"""
import argparse, json, platform, sys, time
from pathlib import Path

import torch

from fm_mnist.cli import _load_flow, tune_cpu_allocator
from fm_mnist.evaluation import Evaluator
from fm_mnist.utils import get_device
import fm_mnist.sampler

# solver name -> model evaluations per step; every solver fm_mnist has
SOLVERS = {'euler': 1}


def sample(flow, solver, nfe, n, seed, batch_size):
    "Samples with `solver` at `nfe` model evaluations, or None when the solver cannot hit that NFE exactly."
    per_step = SOLVERS[solver]
    if nfe % per_step: return None
    return flow.sample(num_samples=n, num_steps=nfe // per_step, seed=seed, batch_size=batch_size)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument('--checkpoint'); src.add_argument('--pretrained', action='store_true')
    p.add_argument('--results_dir', default='results')
    p.add_argument('--nfe', default='1,2,4,8,16,32,100')
    p.add_argument('--num_samples', type=int, help='N (default: 10000 on CUDA, else 2000)')
    p.add_argument('--batch_size', type=int, default=500)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device')
    p.add_argument('--data_dir')
    p.add_argument('--out', default='benchmarks/results')
    args = p.parse_args(argv)
    tune_cpu_allocator()
    device = get_device(args.device)
    flow, source = _load_flow(args, device)
    n = args.num_samples or (10_000 if device.type == 'cuda' else 2_000)
    nfes = [int(x) for x in args.nfe.split(',')]
    ev = Evaluator(args.data_dir, device=device, batch_size=args.batch_size)
    floor = ev.floor(n)
    rows = []
    for solver in SOLVERS:
        for nfe in nfes:
            t0 = time.perf_counter()
            s = sample(flow, solver, nfe, n, args.seed, args.batch_size)
            if s is None: continue
            r = ev.evaluate(s, floor=False)
            rows.append({'solver': solver, 'nfe': nfe, 'fid': r['fid'], 'confidence': r['confidence'],
                         'class_tv_from_uniform': r['class_tv_from_uniform'], 'seconds': time.perf_counter() - t0})
            print(f"{solver:>8} NFE {nfe:>4}: FID {r['fid']:8.3f}  confidence {r['confidence']:.4f}  ({rows[-1]['seconds']:.0f} s)", flush=True)
    hw = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads'
    meta = {'checkpoint': source, 'num_samples': n, 'seed': args.seed, 'hardware': hw, 'torch': torch.__version__, **floor}
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / 'quality_vs_nfe.json').write_text(json.dumps({'meta': meta, 'rows': rows}, indent=2))
    header = '| solver | ' + ' | '.join(f'NFE {k}' for k in nfes) + ' |'
    lines = [f"Quality versus NFE: {source}, N = {n}, seed {args.seed}, {hw}. "
             f"Real-data floor at this N: FID {floor['fid_floor']:.3f}. Each cell: FID / confidence.", '',
             header, '|' + ' --- |' * (len(nfes) + 1)]
    for solver in SOLVERS:
        cells = {r['nfe']: f"{r['fid']:.2f} / {r['confidence']:.3f}" for r in rows if r['solver'] == solver}
        lines.append(f'| {solver} | ' + ' | '.join(cells.get(k, '') for k in nfes) + ' |')
    (out / 'quality_vs_nfe.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for solver in SOLVERS:
        rs = [r for r in rows if r['solver'] == solver]
        ax.plot([r['nfe'] for r in rs], [r['fid'] for r in rs], 'o-', label=solver)
    ax.axhline(floor['fid_floor'], color='k', ls='--', lw=0.8, label='real-data floor')
    ax.set_xscale('log'); ax.set_yscale('log'); ax.set_xlabel('NFE (model evaluations)'); ax.set_ylabel(f'FID (N = {n})')
    ax.legend(); ax.set_title('sample quality versus NFE'); fig.tight_layout()
    fig.savefig(out / 'quality_vs_nfe.png', dpi=120)
    print(f'written: {out}/quality_vs_nfe.md, .json, .png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
