"""Sample quality against the number of function evaluations (NFE), for every solver fm_mnist has.

    python benchmarks/quality_vs_nfe.py --pretrained --data_dir <MNIST root>
    python benchmarks/quality_vs_nfe.py --pretrained conditional --nfe 2,4,8,16,32 --name quality_vs_nfe_conditional
    python benchmarks/quality_vs_nfe.py --pretrained few_step --nfe 1,2,4 --solvers euler,midpoint
    python benchmarks/quality_vs_nfe.py --checkpoint results/meanflow/checkpoint_final.pt --nfe 1,2,4 --solvers meanflow,midpoint
    python benchmarks/quality_vs_nfe.py --checkpoint results/checkpoint_final.pt --num_samples 10000 --device cuda

NFE counts network forward passes per sample: steps times evaluations per step, times two for a guided step (both branches
of classifier-free guidance run in one batched call on a doubled batch). Fixed-step solvers are run at each NFE they can hit
exactly; the adaptive dopri5 at each of --tolerances, with the NFE it chose; a few-step model's own jump ('meanflow') costs
one pass per step. Every cell uses the same N, the same starting noise (seed) and the same evaluator; the real-data floor
at that N is printed beside the table. A conditional model is asked for every digit equally often. Writes NAME.md, .json
and .png into --out.
"""
import argparse, sys, time

import torch

from common import add_common_flags, hardware, model_from_args, num_samples, setup, write
from fm_mnist.config import SampleConfig
from fm_mnist.evaluation import Evaluator
from fm_mnist.sampler import SOLVERS, cycle_labels


class ClampedTime(torch.nn.Module):
    "The wrapped network, asked for the velocity at min(t, t_max) instead of t."
    def __init__(self, model, t_max):
        super().__init__()
        self.model, self.t_max = model, t_max
        self.num_classes, self.image_shape = getattr(model, 'num_classes', None), getattr(model, 'image_shape', (1, 28, 28))
    def forward(self, x, t, *args, **kwargs):
        return self.model(x, torch.as_tensor(t, device=x.device).clamp(max=self.t_max), *args, **kwargs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument('--nfe', default='1,2,4,8,16,32,100')
    p.add_argument('--solvers', help='fixed-step solvers to run (default: all, and the model\'s own jump if it has one)')
    p.add_argument('--tolerances', default='1e-2,1e-3', help="dopri5's rtol = atol values ('' for none)")
    p.add_argument('--guidance_scale', type=float, help='conditional models (default: the library\'s)')
    p.add_argument('--name', default='quality_vs_nfe', help='base name of the files written')
    p.add_argument('--batch_size', type=int, default=500)
    p.add_argument('--t_max', type=float, help='ask the network for the velocity at min(t, t_max) instead of t: tests whether '
                   'evaluating at t = 1 itself hurts (the last stage of Heun and RK4 is there)')
    args = p.parse_args(argv)
    device = setup(args)
    flow, source = model_from_args(args, device)
    if args.t_max is not None:
        flow.model = ClampedTime(flow.model, args.t_max)
        source += f', network evaluated at min(t, {args.t_max:g})'
    per_step = {**flow.own_solvers, **{s: k for s, k in SOLVERS.items() if k}}
    solvers = args.solvers.split(',') if args.solvers else list(per_step)
    n, nfes = num_samples(args, device), [int(x) for x in args.nfe.split(',')]
    labels = cycle_labels(n, flow.num_classes)
    w = next(x for x in (args.guidance_scale, flow.default_guidance_scale, SampleConfig.guidance_scale) if x is not None)
    passes = 2 if labels is not None and flow.default_guidance_scale is None and w not in (0, 1) else 1
    ev = Evaluator(args.data_dir, device=device, batch_size=args.batch_size)
    floor = ev.floor(n)
    rows = []

    def run(solver, **kw):
        t0 = time.perf_counter()
        s, nfe = flow.sample(num_samples=n, seed=args.seed, batch_size=args.batch_size, solver=solver, labels=labels,
                             guidance_scale=args.guidance_scale, return_nfe=True, **kw)
        r = ev.evaluate(s, floor=False, labels=None if labels is None else torch.tensor(labels))
        rows.append({'solver': solver, 'nfe': nfe, 'fid': r['fid'], 'confidence': r['confidence'],
                     'class_tv_from_uniform': r['class_tv_from_uniform'], 'label_agreement': r.get('label_agreement'),
                     'seconds': time.perf_counter() - t0, **{k: v for k, v in kw.items() if k == 'rtol'}})
        agree = f"  agreement {r['label_agreement']:.4f}" if labels is not None else ''
        print(f"{solver:>8} NFE {nfe:>4}: FID {r['fid']:8.3f}  confidence {r['confidence']:.4f}{agree}  ({rows[-1]['seconds']:.0f} s)",
              flush=True)

    for solver in solvers:
        cost = per_step[solver] * (1 if solver in flow.own_solvers else passes)
        for nfe in nfes:
            if nfe % cost == 0: run(solver, num_steps=nfe // cost)
    for tol in [float(x) for x in args.tolerances.split(',') if x]: run('dopri5', rtol=tol, atol=tol)

    hw = hardware(device)
    meta = {'checkpoint': source, 'num_samples': n, 'seed': args.seed, 'hardware': hw,
            'guidance_scale': w if labels is not None else None, **floor}
    cell = lambda r: f"{r['fid']:.2f} / {r['confidence']:.3f}" + (f" / {r['label_agreement']:.3f}" if labels is not None else '')
    what = 'FID / confidence' + (' / agreement with the requested digit' if labels is not None else '')
    guided = (f", guidance {w:g}" + (' (built in by training)' if flow.default_guidance_scale is not None else
                                     ', both branches counted')) if labels is not None else ''
    lines = [f"Quality versus NFE (network forward passes per sample): {source}{guided}, N = {n}, seed {args.seed}, {hw}. "
             f"Real-data floor at this N: FID {floor['fid_floor']:.3f}. Each cell: {what}.", '',
             '| solver | ' + ' | '.join(f'NFE {k}' for k in nfes) + ' |', '|' + ' --- |' * (len(nfes) + 1)]
    for solver in solvers:
        cells = {r['nfe']: cell(r) for r in rows if r['solver'] == solver}
        lines.append(f'| {solver} | ' + ' | '.join(cells.get(k, '') for k in nfes) + ' |')
    for r in rows:
        if r['solver'] == 'dopri5': lines.append(f"\ndopri5, rtol = atol = {r['rtol']:g}: NFE {r['nfe']}, {cell(r)}")
    write(args.out, args.name, {'meta': meta, 'rows': rows}, '\n'.join(lines))
    print('\n'.join(lines))
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for solver in solvers + ['dopri5']:
        rs = [r for r in rows if r['solver'] == solver]
        if rs: ax.plot([r['nfe'] for r in rs], [r['fid'] for r in rs], 'o-' if solver != 'dopri5' else 's', label=solver)
    ax.axhline(floor['fid_floor'], color='k', ls='--', lw=0.8, label='real-data floor (expected FID of real digits)')
    ax.set_xscale('log'); ax.set_yscale('log'); ax.set_xlabel('NFE (network forward passes)'); ax.set_ylabel(f'FID (N = {n})')
    ax.legend(fontsize=8); ax.set_title('sample quality versus NFE'); fig.tight_layout()
    fig.savefig(f'{args.out}/{args.name}.png', dpi=120)
    print(f'written: {args.out}/{args.name}.md, .json, .png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
