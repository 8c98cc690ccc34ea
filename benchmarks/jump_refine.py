"""Jump, then refine, with two networks: the one-step model's jump to x_tau = x0 + tau (x1_hat - x0), then Euler steps of
the teacher from tau to 1. The measurement behind the shipped few-step model (the few-step notebook, "Jump, then refine").

    python benchmarks/jump_refine.py                     # one-step model, shipped unconditional teacher, N = 2000
    python benchmarks/jump_refine.py --taus 0.3,0.5 --teacher_steps 2

For every tau and every number of teacher steps k (equal steps from tau to 1), scores the samples (1 + k network
evaluations each) with the project's evaluator at N samples, noise seed --seed. x1_hat is not clipped before x_tau is
formed (x_tau is the point one Euler step of size tau along the jump reaches); the final samples are clipped to [-1, 1].
Writes jump_refine.json and jump_refine.md into --out.
"""
import argparse, sys

import torch

from common import add_common_flags, comma_list, hardware, setup, write
from fm_mnist.checkpoint import load_flow
from fm_mnist.evaluation import Evaluator


@torch.inference_mode()
def jump_then_refine(jumper, teacher, x0: torch.Tensor, tau: float, teacher_steps: int, batch_size: int = 500) -> torch.Tensor:
    "Samples from noise `x0`: the jumper's one Euler step to `tau`, then `teacher_steps` equal Euler steps of the teacher to 1."
    out = []
    for xb in x0.split(batch_size):
        xb = xb.to(jumper.device)
        x = xb + tau * jumper.model(xb, torch.zeros(len(xb), device=xb.device))
        t, h = tau, (1 - tau) / teacher_steps
        for _ in range(teacher_steps):
            x = x + h * teacher.model(x, torch.full((len(x),), t, device=x.device))
            t += h
        out.append(teacher.clip(x.float()).cpu())
    return torch.cat(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, model=False, num_samples=2000)
    p.add_argument('--jumper', default='one_step', help='the model whose one Euler step jumps (a shipped name or a checkpoint)')
    p.add_argument('--teacher', default='unconditional', help='the model that refines (a shipped name or a checkpoint)')
    p.add_argument('--taus', type=comma_list(float), default=(0.2, 0.3, 0.4, 0.5, 0.6), help='times the jump reaches, in (0, 1)')
    p.add_argument('--teacher_steps', type=comma_list(int, 1, what='teacher steps'), default=(1,), help='numbers of teacher steps, comma-separated')
    p.add_argument('--name', default='jump_refine')
    args = p.parse_args(argv)
    if not all(0 < t < 1 for t in args.taus): p.error(f'--taus must be in (0, 1), got {args.taus}')
    device = setup(args)
    jumper, teacher = load_flow(args.jumper, device), load_flow(args.teacher, device)
    if jumper.num_classes is not None or teacher.num_classes is not None: p.error('both models must be unconditional')
    ev = Evaluator(args.data_dir, device=device)
    x0 = torch.randn(args.num_samples, *teacher.image_shape, generator=torch.Generator().manual_seed(args.seed))
    rows = []
    for k in args.teacher_steps:
        for tau in args.taus:
            r = ev.evaluate(jump_then_refine(jumper, teacher, x0, tau, k), floor=False)
            rows.append({'tau': tau, 'teacher_steps': k, 'nfe': 1 + k, **{m: r[m] for m in ('fid', 'confidence', 'class_tv_from_uniform')}})
            print(f"tau {tau:g}, {k} teacher step(s), NFE {1 + k}: FID {r['fid']:.1f}, confidence {r['confidence']:.3f}", flush=True)
    data = {'meta': {'jumper': args.jumper, 'teacher': args.teacher, 'num_samples': args.num_samples, 'seed': args.seed,
                     'hardware': hardware(device), 'fid_floor': ev.floor(args.num_samples)['fid_floor']}, 'rows': rows}
    md = [f"The {args.jumper} model's jump to tau, then equal Euler steps of the {args.teacher} model to t = 1 ({data['meta']['hardware']}); "
          f"evaluator N = {args.num_samples}, noise seed {args.seed}, real-data floor FID {data['meta']['fid_floor']:.2f}.", '',
          '| tau | teacher steps | NFE | FID | confidence | class TV |', '| --- | --- | --- | --- | --- | --- |']
    md += [f"| {r['tau']:g} | {r['teacher_steps']} | {r['nfe']} | {r['fid']:.1f} | {r['confidence']:.3f} | {r['class_tv_from_uniform']:.3f} |" for r in rows]
    write(args.out, args.name, data, '\n'.join(md))
    print('\n'.join(md))
    return 0


if __name__ == '__main__':
    sys.exit(main())
