"""How the guidance scale w moves sample quality and agreement with the requested digit, for a class-conditional model.

    python benchmarks/guidance.py --pretrained conditional --data_dir <MNIST root>
    python benchmarks/guidance.py --checkpoint results/checkpoint_final.pt --num_samples 10000 --device cuda

Every w uses the same N, the same starting noise (seed), the same requested digits (0-9 equally often), the same solver
and steps, and the same evaluator. Reports FID (beside the real-data floor at that N), the classifier's agreement with the
requested digit, its confidence, and the class histogram's distance from uniform; NFE counts forward passes (a guided step
is two: w = 0 and w = 1 need one branch only). Writes NAME.md, .json and .png into --out.
"""
import argparse, sys, time

import torch

from common import add_common_flags, hardware, model_from_args, num_samples, setup, write
from fm_mnist.evaluation import Evaluator
from fm_mnist.sampler import SOLVERS, cycle_labels


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument('--scales', default='0,1,1.5,2,3,4,6')
    p.add_argument('--solver', default='midpoint', choices=[s for s, n in SOLVERS.items() if n])
    p.add_argument('--num_steps', type=int, default=4)
    p.add_argument('--batch_size', type=int, default=500)
    p.add_argument('--name', default='guidance')
    args = p.parse_args(argv)
    device = setup(args)
    flow, source = model_from_args(args, device)
    if flow.num_classes is None: sys.exit(f'{source} is unconditional: guidance needs a class-conditional checkpoint')
    n = num_samples(args, device)
    labels = cycle_labels(n, flow.num_classes)
    ev = Evaluator(args.data_dir, device=device, batch_size=args.batch_size)
    floor = ev.floor(n)
    rows = []
    for w in [float(x) for x in args.scales.split(',')]:
        t0 = time.perf_counter()
        s, nfe = flow.sample(num_samples=n, num_steps=args.num_steps, seed=args.seed, batch_size=args.batch_size,
                             solver=args.solver, labels=labels, guidance_scale=w, return_nfe=True)
        r = ev.evaluate(s, floor=False, labels=torch.tensor(labels))
        rows.append({'guidance_scale': w, 'nfe': nfe, 'fid': r['fid'], 'label_agreement': r['label_agreement'],
                     'confidence': r['confidence'], 'class_tv_from_uniform': r['class_tv_from_uniform'],
                     'seconds': time.perf_counter() - t0})
        print(f"w {w:4g}: FID {r['fid']:8.3f}  agreement {r['label_agreement']:.4f}  confidence {r['confidence']:.4f}  "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)
    hw = hardware(device)
    meta = {'checkpoint': source, 'num_samples': n, 'seed': args.seed, 'solver': args.solver, 'num_steps': args.num_steps,
            'hardware': hw, **floor}
    lines = [f"Guidance scale w: {source}, {args.solver} with {args.num_steps} steps, N = {n} (digits 0-9 equally often), "
             f"seed {args.seed}, {hw}. Real-data floor at this N: FID {floor['fid_floor']:.3f}. NFE: network forward passes.", '',
             '| w | NFE | FID | agreement with requested digit | confidence | class TV from uniform |', '| --- | --- | --- | --- | --- | --- |']
    lines += [f"| {r['guidance_scale']:g} | {r['nfe']} | {r['fid']:.2f} | {r['label_agreement']:.4f} | {r['confidence']:.4f} | "
              f"{r['class_tv_from_uniform']:.4f} |" for r in rows]
    write(args.out, args.name, {'meta': meta, 'rows': rows}, '\n'.join(lines))
    print('\n'.join(lines))
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, a1 = plt.subplots(figsize=(6, 3.5))
    ws = [r['guidance_scale'] for r in rows]
    a1.plot(ws, [r['fid'] for r in rows], 'o-', color='C0'); a1.set_ylabel('FID', color='C0'); a1.set_xlabel('guidance scale w')
    a2 = a1.twinx(); a2.plot(ws, [r['label_agreement'] for r in rows], 's--', color='C1')
    a2.set_ylabel('agreement with requested digit', color='C1')
    a1.set_title(f"{args.solver}, {args.num_steps} steps, N = {n}"); fig.tight_layout()
    fig.savefig(f'{args.out}/{args.name}.png', dpi=120)
    print(f'written: {args.out}/{args.name}.md, .json, .png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
