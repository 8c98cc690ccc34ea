"""Sample quality against the number of function evaluations (NFE), for every solver fm_mnist has.

    python benchmarks/quality_vs_nfe.py --pretrained --data_dir <MNIST root>
    python benchmarks/quality_vs_nfe.py --pretrained conditional --guidance_scale 1.5 --name quality_vs_nfe_conditional
    python benchmarks/quality_vs_nfe.py --checkpoint results/checkpoint_final.pt --num_samples 10000 --device cuda

NFE counts model evaluations: steps times evaluations per step (a guided step, both branches in one batched call, counts
once). Fixed-step solvers are run at each NFE they can hit exactly; the adaptive dopri5 at each of --tolerances, with the
NFE it chose. Every cell uses the same N, the same starting noise (seed) and the same evaluator; the real-data floor at
that N is printed beside the table. A conditional model is asked for every digit equally often. Writes NAME.md, .json
and .png into --out.
"""
import argparse, json, platform, sys, time
from pathlib import Path

import torch

from fm_mnist.cli import _load_flow, tune_cpu_allocator
from fm_mnist.evaluation import Evaluator
from fm_mnist.utils import get_device
from fm_mnist.sampler import SOLVERS

FIXED = [s for s, per_step in SOLVERS.items() if per_step]  # euler, midpoint, heun, rk4


def labels_for(flow, n):
    "Every digit equally often for a conditional model; None for an unconditional one."
    return None if flow.num_classes is None else [i % flow.num_classes for i in range(n)]


def sample(flow, solver, nfe, n, seed, batch_size, guidance_scale):
    "Samples with a fixed-step `solver` at `nfe` model evaluations, or None when it cannot hit that NFE exactly."
    per_step = SOLVERS[solver]
    if nfe % per_step: return None
    return flow.sample(num_samples=n, num_steps=nfe // per_step, seed=seed, batch_size=batch_size, solver=solver,
                       labels=labels_for(flow, n), guidance_scale=guidance_scale)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument('--checkpoint')
    src.add_argument('--pretrained', nargs='?', const='unconditional', choices=['unconditional', 'conditional'])
    p.add_argument('--results_dir', default='results')
    p.add_argument('--nfe', default='1,2,4,8,16,32,100')
    p.add_argument('--solvers', default=','.join(FIXED), help='fixed-step solvers to run')
    p.add_argument('--tolerances', default='1e-2,1e-3', help="dopri5's rtol = atol values ('' for none)")
    p.add_argument('--guidance_scale', type=float, default=1.5, help='conditional models')
    p.add_argument('--name', default='quality_vs_nfe', help='base name of the files written')
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
    rows, solvers = [], args.solvers.split(',')
    labels = labels_for(flow, n)

    def record(solver, nfe, s, t0, **extra):
        r = ev.evaluate(s, floor=False, labels=None if labels is None else torch.tensor(labels))
        rows.append({'solver': solver, 'nfe': nfe, 'fid': r['fid'], 'confidence': r['confidence'],
                     'class_tv_from_uniform': r['class_tv_from_uniform'], 'label_agreement': r.get('label_agreement'),
                     'seconds': time.perf_counter() - t0, **extra})
        agree = f"  agreement {r['label_agreement']:.4f}" if labels is not None else ''
        print(f"{solver:>8} NFE {nfe:>4}: FID {r['fid']:8.3f}  confidence {r['confidence']:.4f}{agree}  ({rows[-1]['seconds']:.0f} s)", flush=True)

    for solver in solvers:
        for nfe in nfes:
            t0 = time.perf_counter()
            s = sample(flow, solver, nfe, n, args.seed, args.batch_size, args.guidance_scale)
            if s is not None: record(solver, nfe, s, t0)
    for tol in [float(x) for x in args.tolerances.split(',') if x]:
        t0 = time.perf_counter()
        s = flow.sample(num_samples=n, seed=args.seed, batch_size=args.batch_size, solver='dopri5', rtol=tol, atol=tol,
                        labels=labels, guidance_scale=args.guidance_scale)
        record('dopri5', flow.last_nfe, s, t0, tolerance=tol)
    hw = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads'
    meta = {'checkpoint': source, 'num_samples': n, 'seed': args.seed, 'hardware': hw, 'torch': torch.__version__,
            'guidance_scale': args.guidance_scale if labels is not None else None, **floor}
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / f'{args.name}.json').write_text(json.dumps({'meta': meta, 'rows': rows}, indent=2))
    cell = lambda r: f"{r['fid']:.2f} / {r['confidence']:.3f}" + (f" / {r['label_agreement']:.3f}" if labels is not None else '')
    what = 'FID / confidence' + (' / agreement with the requested digit' if labels is not None else '')
    guided = f", guidance scale {args.guidance_scale:g}" if labels is not None else ''
    header = '| solver | ' + ' | '.join(f'NFE {k}' for k in nfes) + ' |'
    lines = [f"Quality versus NFE: {source}{guided}, N = {n}, seed {args.seed}, {hw}. "
             f"Real-data floor at this N: FID {floor['fid_floor']:.3f}. Each cell: {what}.", '',
             header, '|' + ' --- |' * (len(nfes) + 1)]
    for solver in solvers:
        cells = {r['nfe']: cell(r) for r in rows if r['solver'] == solver}
        lines.append(f'| {solver} | ' + ' | '.join(cells.get(k, '') for k in nfes) + ' |')
    for r in rows:
        if r['solver'] == 'dopri5': lines.append(f"\ndopri5, rtol = atol = {r['tolerance']:g}: NFE {r['nfe']}, {cell(r)}")
    (out / f'{args.name}.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for solver in solvers + ['dopri5']:
        rs = [r for r in rows if r['solver'] == solver]
        if rs: ax.plot([r['nfe'] for r in rs], [r['fid'] for r in rs], 'o-' if solver != 'dopri5' else 's', label=solver)
    ax.axhline(floor['fid_floor'], color='k', ls='--', lw=0.8, label='real-data floor')
    ax.set_xscale('log'); ax.set_yscale('log'); ax.set_xlabel('NFE (model evaluations)'); ax.set_ylabel(f'FID (N = {n})')
    ax.legend(); ax.set_title('sample quality versus NFE'); fig.tight_layout()
    fig.savefig(out / f'{args.name}.png', dpi=120)
    print(f'written: {out}/{args.name}.md, .json, .png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
