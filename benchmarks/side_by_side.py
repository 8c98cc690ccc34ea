"""This library's recipe and a well-known reference recipe, trained on the same images and scored by the same evaluator.

The reference is TorchCFM's MNIST example: its `UNetModel` with 32 channels and one residual block, OT-CFM
(`ExactOptimalTransportConditionalFlowMatcher`, sigma 0), Adam at its default learning rate, batch 128, no EMA. Ours: the
`cpu` recipe (its UNet and its training settings, batch size included) over the same number of training images, drawn
in the same order. Both are sampled by the library's solvers from the same noise: Euler and midpoint at
--nfe network evaluations, and dopri5 (torchdiffeq).

    pip install -e ".[bench]"
    python benchmarks/side_by_side.py --images 60000 --num_samples 2000       # one epoch each (the reference: about an hour)

Reports, for both sides: parameters, forward FLOPs per image, training images/s, and FID (with the real-data floor at the
same N), confidence and class TV at each sampler; then the ratios. To split the speed-up into architecture and engineering,
it also times the reference's UNet trained by this library's loop (`--attribution_steps` steps): ours / that = what the
architecture buys, that / the reference recipe = what the loop buys. Trained models are kept in --cache (keyed by the
recipe, the images and the seed), so scoring can be redone without training again.
"""
import argparse, hashlib, json, sys, time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import add_common_flags, hardware, setup, write
from fm_mnist.checkpoint import flow_from_checkpoint, read_checkpoint, save_checkpoint
from fm_mnist.config import PRESETS
from fm_mnist.data import load_mnist_tensors
from fm_mnist.evaluation import Evaluator
from fm_mnist.sampler import solve_ode
from fm_mnist.training import epoch_batches, new_train_state, train
from fm_mnist.unet import count_parameters
from speed import ReferenceUNet, timed_training


@torch.inference_mode()
def sample(velocity, n, seed, solver, steps=1, batch=250, device='cpu', tol=1e-4):
    "Samples `(n, 1, 28, 28)` from noise drawn with `seed`; returns (samples, NFE of the first batch)."
    x0 = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    outs, nfes = [], []
    for chunk in x0.split(batch):
        x, _, nfe = solve_ode(velocity, chunk.to(device), steps, solver, rtol=tol, atol=tol)  # the library's solvers, NFE counted
        outs.append(x.cpu()); nfes.append(nfe)
    return torch.cat(outs).clamp(-1, 1), nfes[0]


def flops_per_image(f, device):
    with FlopCounterMode(display=False) as fc:
        f(torch.zeros(1, 1, 28, 28, device=device), torch.full((1,), 0.5, device=device))
    return fc.get_total_flops()


def reference_recipe(images, steps, batch_size, seed, device, progress=True):
    "TorchCFM's MNIST recipe for `steps` steps from `seed`; returns the model and its images/s."
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher
    from torchcfm.models.unet import UNetModel
    torch.manual_seed(seed)
    model = UNetModel(dim=(1, 28, 28), num_channels=32, num_res_blocks=1).to(device)
    opt = torch.optim.Adam(model.parameters())
    fm = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    t0, done = time.perf_counter(), 0
    for x1 in epoch_batches(images, batch_size, seed, 1, steps):
        x0 = torch.randn_like(x1)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        loss = torch.mean((model(t, xt) - ut) ** 2)
        opt.zero_grad(); loss.backward(); opt.step()
        done += 1
        if progress and done % 25 == 0: print(f'  reference step {done}/{steps}, loss {loss.item():.4f}', flush=True)
    return model, steps * batch_size / (time.perf_counter() - t0)


def train_reference(images, steps, batch_size, seed, device, cache: Path):
    "The reference recipe's model after `steps` steps (from the cache if it was trained before)."
    path = cache / f'reference_{steps}steps_batch{batch_size}_seed{seed}.pt'
    if path.is_file():
        from torchcfm.models.unet import UNetModel
        model = UNetModel(dim=(1, 28, 28), num_channels=32, num_res_blocks=1).to(device)
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True)['model_state'])
        return model.eval()
    model, _ = reference_recipe(images, steps, batch_size, seed, device)
    torch.save({'model_state': model.state_dict()}, path)
    return model.eval()


def train_ours(mc, tc, images, device, cache: Path):
    "This library's recipe for `tc.max_steps` steps: its EMA flow (from the cache if it was trained before)."
    key = hashlib.sha256(json.dumps([asdict(mc), asdict(tc)], sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f'fm_mnist_{tc.max_steps}steps_{key}.pt'
    if path.is_file(): return flow_from_checkpoint(read_checkpoint(path), str(path), device)
    state = new_train_state(mc, tc, len(images), device)
    train(state, images, progress=False)
    save_checkpoint(state.checkpoint(), path)
    return state.ema_flow()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, model=False, num_samples=2000)
    p.add_argument('--images', type=int, default=60_000, help='training budget: images seen by each side')
    p.add_argument('--batch_size', type=int, default=128, help="the reference's batch size (its recipe's)")
    p.add_argument('--our_batch_size', type=int, help="ours (default: the preset's)")
    p.add_argument('--dopri5', action=argparse.BooleanOptionalAction, default=True, help='also score both with dopri5')
    p.add_argument('--preset', choices=sorted(PRESETS), default='cpu')
    p.add_argument('--nfe', default='8,20', help='NFE at which Euler and midpoint are compared')
    p.add_argument('--euler_steps', help='(older name) Euler steps only, e.g. 20,100')
    p.add_argument('--speed_steps', type=int, default=20, help='steps timed for each recipe\'s training speed')
    p.add_argument('--attribution_steps', type=int, default=20, help='steps timed for the reference UNet in our loop (0: skip)')
    p.add_argument('--cache', default='benchmarks/.cache/side_by_side', help='where trained models are kept')
    args = p.parse_args(argv)
    device = setup(args)
    steps = args.images // args.batch_size  # the reference's
    images = load_mnist_tensors(args.data_dir, train=True)[0].to(device)
    cache = Path(args.cache); cache.mkdir(parents=True, exist_ok=True)

    mc, tc = PRESETS[args.preset]
    tc = replace(tc, batch_size=args.our_batch_size or tc.batch_size, seed=args.seed, minutes=None)
    tc = replace(tc, max_steps=args.images // tc.batch_size)
    print(f'ours ({args.preset} recipe): {tc.max_steps} steps of {tc.batch_size}', flush=True)
    ours = train_ours(mc, tc, images, device, cache).model.eval()
    print(f'reference (TorchCFM MNIST example): {steps} steps', flush=True)
    ref = train_reference(images, steps, args.batch_size, args.seed, device, cache)
    # speed, measured apart from the (possibly cached) training runs: each recipe's own loop for --speed_steps steps
    ours_ips = args.speed_steps * tc.batch_size / timed_training(
        new_train_state(mc, replace(tc, max_steps=None), len(images), device), images, 2, args.speed_steps)[0]
    _, ref_ips = reference_recipe(images, args.speed_steps, args.batch_size, args.seed, device, progress=False)
    print(f'training speed: ours {ours_ips:.0f}, reference {ref_ips:.0f} images/s', flush=True)

    samplers = ([('euler', k, k) for k in map(int, args.euler_steps.split(','))] if args.euler_steps else
                [(s, k, k // (1 if s == 'euler' else 2)) for k in map(int, args.nfe.split(',')) for s in ('euler', 'midpoint')])
    sides = {'fm_mnist': (lambda x, t: ours(x, t), ours, ours_ips), 'torchcfm_reference': (lambda x, t: ref(t, x), ref, ref_ips)}
    ev = Evaluator(args.data_dir, device=device)
    n = args.num_samples
    floor = ev.floor(n)['fid_floor']
    results = {}
    for name, (velocity, model, ips) in sides.items():
        r = {'parameters': count_parameters(model), 'gflops_per_image_forward': flops_per_image(velocity, device) / 1e9,
             'train_images_per_s': ips}
        for solver, nfe, k in samplers + ([('dopri5', None, 1)] if args.dopri5 else []):
            s, used = sample(velocity, n, args.seed, solver, steps=k, device=device)
            q = ev.evaluate(s, floor=False)
            r[f'{solver}_{nfe}' if nfe else solver] = {'nfe': used, 'fid': q['fid'], 'confidence': q['confidence'],
                                                      'class_tv_from_uniform': q['class_tv_from_uniform']}
            print(f'{name} {solver} (NFE {used}): FID {q["fid"]:.2f}, confidence {q["confidence"]:.3f}', flush=True)
        results[name] = r

    ref_in_our_loop = None
    if args.attribution_steps:
        st = new_train_state(PRESETS['cpu'][0], replace(tc, max_steps=None, batch_size=args.batch_size), len(images), device,
                             model=ReferenceUNet())
        wall, _, _ = timed_training(st, images, 2, args.attribution_steps)
        ref_in_our_loop = args.attribution_steps * args.batch_size / wall
        print(f'reference UNet in our training loop: {ref_in_our_loop:.0f} images/s', flush=True)

    hw = hardware(device)
    meta = {'images_seen': steps * args.batch_size, 'batch_size': args.batch_size, 'our_batch_size': tc.batch_size, 'num_samples': n, 'fid_floor': floor,
            'hardware': hw, 'seed': args.seed, 'preset': args.preset, 'train_config': asdict(tc)}
    a, b = results['fm_mnist'], results['torchcfm_reference']
    ratios = {'train_speed': a['train_images_per_s'] / b['train_images_per_s'], 'parameters': a['parameters'] / b['parameters'],
              'flops': a['gflops_per_image_forward'] / b['gflops_per_image_forward']}
    if ref_in_our_loop:
        meta['reference_unet_in_our_loop_images_per_s'] = ref_in_our_loop
        ratios['architecture'] = a['train_images_per_s'] / ref_in_our_loop
        ratios['engineering'] = ref_in_our_loop / b['train_images_per_s']
    cols = [f'{s}_{nfe}' for s, nfe, _ in samplers] + (['dopri5'] if args.dopri5 else [])
    lines = [f"Same training images ({meta['images_seen']:,}; batch {tc.batch_size} for ours, {args.batch_size} for the reference), "
             f"N = {n}, seed {args.seed}, "
             f"{hw}; real-data floor at this N: FID {floor:.2f}. Quality cells: FID / confidence (NFE).", '',
             '| recipe | parameters | GFLOPs/image (forward) | train images/s | ' + ' | '.join(cols) + ' |',
             '|' + ' --- |' * (4 + len(cols))]
    for name, r in results.items():
        lines.append(f"| {name} | {r['parameters']:,} | {r['gflops_per_image_forward']:.3f} | {r['train_images_per_s']:.0f} | "
                     + ' | '.join(f"{r[c]['fid']:.2f} / {r[c]['confidence']:.3f} ({r[c]['nfe']:.0f})" for c in cols) + ' |')
    lines += ['', f"Ratios (fm_mnist / reference): training speed {ratios['train_speed']:.2f}x, parameters "
              f"{ratios['parameters']:.2f}x, FLOPs per image {ratios['flops']:.2f}x."]
    if ref_in_our_loop:
        lines += ['', f"The reference's UNet trained by this library's loop: {ref_in_our_loop:.0f} images/s. Of the "
                  f"{ratios['train_speed']:.2f}x, the architecture accounts for {ratios['architecture']:.2f}x (our UNet / theirs, "
                  f"same loop) and the engineering for {ratios['engineering']:.2f}x (same UNet, our loop / their recipe's loop)."]
    write(args.out, 'side_by_side', {'meta': meta, 'results': results, 'ratios': ratios}, '\n'.join(lines))
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
