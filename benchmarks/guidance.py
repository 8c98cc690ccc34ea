"""How the guidance scale w moves sample quality and agreement with the requested digit, for a class-conditional model.

    python benchmarks/guidance.py --pretrained conditional --data_dir <MNIST root>
    python benchmarks/guidance.py --checkpoint results/checkpoint_final.pt --num_samples 10000 --device cuda

Every w uses the same N, the same starting noise (seed), the same requested digits (0-9 equally often), the same solver
and steps, and the same evaluator. Reports FID (beside the real-data floor at that N), the classifier's agreement with the
requested digit, its confidence, and the class histogram's distance from uniform. Writes NAME.md, .json and .png into --out.
"""
import argparse, json, platform, sys, time
from pathlib import Path

import torch

from fm_mnist.cli import _load_flow, tune_cpu_allocator
from fm_mnist.evaluation import Evaluator
from fm_mnist.sampler import SOLVERS
from fm_mnist.utils import get_device


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument('--checkpoint')
    src.add_argument('--pretrained', nargs='?', const='conditional', choices=['conditional'])
    p.add_argument('--results_dir', default='results')
    p.add_argument('--scales', default='0,1,1.5,2,3,4,6')
    p.add_argument('--solver', default='midpoint', choices=[s for s, n in SOLVERS.items() if n])
    p.add_argument('--num_steps', type=int, default=4)
    p.add_argument('--num_samples', type=int, help='N (default: 10000 on CUDA, else 2000)')
    p.add_argument('--batch_size', type=int, default=500)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device')
    p.add_argument('--data_dir')
    p.add_argument('--name', default='guidance')
    p.add_argument('--out', default='benchmarks/results')
    args = p.parse_args(argv)
    tune_cpu_allocator()
    device = get_device(args.device)
    flow, source = _load_flow(args, device)
    if flow.num_classes is None: sys.exit(f'{source} is unconditional: guidance needs a class-conditional checkpoint')
    n = args.num_samples or (10_000 if device.type == 'cuda' else 2_000)
    labels = [i % flow.num_classes for i in range(n)]
    ev = Evaluator(args.data_dir, device=device, batch_size=args.batch_size)
    floor = ev.floor(n)
    rows = []
    for w in [float(x) for x in args.scales.split(',')]:
        t0 = time.perf_counter()
        s = flow.sample(num_samples=n, num_steps=args.num_steps, seed=args.seed, batch_size=args.batch_size,
                        solver=args.solver, labels=labels, guidance_scale=w)
        r = ev.evaluate(s, floor=False, labels=torch.tensor(labels))
        rows.append({'guidance_scale': w, 'nfe': flow.last_nfe, 'fid': r['fid'], 'label_agreement': r['label_agreement'],
                     'confidence': r['confidence'], 'class_tv_from_uniform': r['class_tv_from_uniform'],
                     'seconds': time.perf_counter() - t0})
        print(f"w {w:4g}: FID {r['fid']:8.3f}  agreement {r['label_agreement']:.4f}  confidence {r['confidence']:.4f}  "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)
    hw = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads'
    meta = {'checkpoint': source, 'num_samples': n, 'seed': args.seed, 'solver': args.solver, 'num_steps': args.num_steps,
            'nfe': rows[0]['nfe'], 'hardware': hw, 'torch': torch.__version__, **floor}
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / f'{args.name}.json').write_text(json.dumps({'meta': meta, 'rows': rows}, indent=2))
    lines = [f"Guidance scale w: {source}, {args.solver} with {args.num_steps} steps ({rows[0]['nfe']} NFE), N = {n} "
             f"(digits 0-9 equally often), seed {args.seed}, {hw}. Real-data floor at this N: FID {floor['fid_floor']:.3f}.", '',
             '| w | FID | agreement with requested digit | confidence | class TV from uniform |', '| --- | --- | --- | --- | --- |']
    lines += [f"| {r['guidance_scale']:g} | {r['fid']:.2f} | {r['label_agreement']:.4f} | {r['confidence']:.4f} | "
              f"{r['class_tv_from_uniform']:.4f} |" for r in rows]
    (out / f'{args.name}.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, a1 = plt.subplots(figsize=(6, 3.5))
    ws = [r['guidance_scale'] for r in rows]
    a1.plot(ws, [r['fid'] for r in rows], 'o-', color='C0'); a1.set_ylabel('FID', color='C0'); a1.set_xlabel('guidance scale w')
    a2 = a1.twinx(); a2.plot(ws, [r['label_agreement'] for r in rows], 's--', color='C1')
    a2.set_ylabel('agreement with requested digit', color='C1')
    a1.set_title(f"{args.solver}, {rows[0]['nfe']} NFE, N = {n}"); fig.tight_layout()
    fig.savefig(out / f'{args.name}.png', dpi=120)
    print(f'written: {out}/{args.name}.md, .json, .png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
