"""This library's recipe and a well-known reference recipe, trained on the same budget and scored by the same evaluator.

The reference is TorchCFM's MNIST example: its `UNetModel` with 32 channels and one residual block, OT-CFM
(`ExactOptimalTransportConditionalFlowMatcher`, sigma 0), Adam at its default learning rate, batch 128, no EMA, sampled with
Euler and with dopri5 (torchdiffeq). Ours: the `cpu` preset (or `--preset gpu`) with its AdamW, warm-up + cosine schedule and
EMA, over the same number of training images. Both see the same batches in the same order.

    pip install -e ".[bench]"
    python benchmarks/side_by_side.py --images 38400 --num_samples 500 --data_dir <MNIST root>

Reports, for both sides: parameters, forward FLOPs per image, training images/s, and FID (with the real-data floor at the
same N) and confidence at Euler 20 and 100 steps and with dopri5 (with the NFE it used); then the ratios. To split the
speed-up into architecture and engineering, it also times the reference's UNet trained by this library's loop
(`--attribution_steps` steps): ours / that = what the architecture buys, that / the reference recipe = what the loop buys.
"""
import argparse, json, platform, sys, time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fm_mnist.cli import tune_cpu_allocator
from fm_mnist.config import PRESETS, TrainConfig
from fm_mnist.data import load_mnist_tensors
from fm_mnist.evaluation import Evaluator
from fm_mnist.sampler import solve_ode
from fm_mnist.training import epoch_batches, new_train_state, train
from fm_mnist.unet import count_parameters
from fm_mnist.utils import get_device


@torch.inference_mode()
def sample(velocity, n, seed, method, steps=None, batch=250, device='cpu', tol=1e-4):
    "Samples `(n, 1, 28, 28)` from noise drawn with `seed`, by Euler (`steps`) or dopri5; returns (samples, NFE per sample batch)."
    x0 = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    outs, nfes = [], []
    for chunk in x0.split(batch):
        x, _, nfe = solve_ode(velocity, chunk.to(device), steps or 1, method, rtol=tol, atol=tol)  # the library's solver, NFE counted
        outs.append(x); nfes.append(nfe)
    return torch.cat(outs).clamp(-1, 1).cpu(), sum(nfes) / len(nfes)


def flops_per_image(f, device):
    with FlopCounterMode(display=False) as fc:
        f(torch.zeros(1, 1, 28, 28, device=device), torch.full((1,), 0.5, device=device))
    return fc.get_total_flops()


def train_reference(images, steps, batch_size, seed, device):
    "TorchCFM's MNIST recipe; returns the model and its training images/s."
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
        if done % 25 == 0: print(f'  reference step {done}/{steps}, loss {loss.item():.4f}', flush=True)
    return model.eval(), steps * batch_size / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--images', type=int, default=38_400, help='training budget: images seen by each side')
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--preset', choices=sorted(PRESETS), default='cpu')
    p.add_argument('--num_samples', type=int, default=500)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device')
    p.add_argument('--data_dir')
    p.add_argument('--out', default='benchmarks/results')
    p.add_argument('--euler_steps', default='20,100')
    p.add_argument('--attribution_steps', type=int, default=20, help='steps timed for the reference UNet in our loop (0: skip)')
    args = p.parse_args(argv)
    tune_cpu_allocator()
    device = get_device(args.device)
    steps = args.images // args.batch_size
    images = load_mnist_tensors(args.data_dir, train=True)[0].to(device)

    mc, tc = PRESETS[args.preset]
    tc = replace(tc, epochs=1, batch_size=args.batch_size, max_steps_per_epoch=steps, seed=args.seed,
                 warmup_steps=min(tc.warmup_steps, max(1, steps // 10)))
    state = new_train_state(mc, tc, device=device)
    print(f'ours ({args.preset} preset): {steps} steps', flush=True)
    t0 = time.perf_counter()
    train(state, images, progress=False)
    ours_ips = steps * args.batch_size / (time.perf_counter() - t0)
    ours = state.ema_flow().model.eval()
    print(f'reference (TorchCFM MNIST example): {steps} steps', flush=True)
    ref, ref_ips = train_reference(images, steps, args.batch_size, args.seed, device)

    sides = {'fm_mnist': (lambda x, t: ours(x, t), ours, ours_ips),
             'torchcfm_reference': (lambda x, t: ref(t, x), ref, ref_ips)}
    ev = Evaluator(args.data_dir, device=device)
    n = args.num_samples
    floor = ev.floor(n)['fid_floor']
    results = {}
    for name, (velocity, model, ips) in sides.items():
        r = {'parameters': count_parameters(model), 'gflops_per_image_forward': flops_per_image(velocity, device) / 1e9,
             'train_images_per_s': ips}
        for k in map(int, args.euler_steps.split(',')):
            s, nfe = sample(velocity, n, args.seed, 'euler', steps=k, device=device)
            q = ev.evaluate(s, floor=False)
            r[f'euler_{k}'] = {'nfe': nfe, 'fid': q['fid'], 'confidence': q['confidence']}
            print(f'{name} euler {k}: FID {q["fid"]:.2f}, confidence {q["confidence"]:.3f}', flush=True)
        s, nfe = sample(velocity, n, args.seed, 'dopri5', device=device)
        q = ev.evaluate(s, floor=False)
        r['dopri5'] = {'nfe': nfe, 'fid': q['fid'], 'confidence': q['confidence']}
        print(f'{name} dopri5 (NFE {nfe:.0f}): FID {q["fid"]:.2f}, confidence {q["confidence"]:.3f}', flush=True)
        results[name] = r

    ref_in_our_loop = None
    if args.attribution_steps:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from speed import reference_state
        from fm_mnist.training import train_step, _use_amp
        st = reference_state(replace(tc, batch_size=args.batch_size), device)
        amp, dtype = _use_amp(device)
        batches = list(epoch_batches(images, args.batch_size, args.seed, 1, args.attribution_steps + 2))
        for x1 in batches[:2]: train_step(st, x1, amp, dtype)  # warm-up
        if device.type == 'cuda': torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x1 in batches[2:]: train_step(st, x1, amp, dtype)
        if device.type == 'cuda': torch.cuda.synchronize()
        ref_in_our_loop = len(batches[2:]) * args.batch_size / (time.perf_counter() - t0)
        print(f'reference UNet in our training loop: {ref_in_our_loop:.0f} images/s', flush=True)

    hw = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads'
    meta = {'images_seen': steps * args.batch_size, 'batch_size': args.batch_size, 'num_samples': n, 'fid_floor': floor,
            'hardware': hw, 'torch': torch.__version__, 'seed': args.seed, 'preset': args.preset}
    a, b = results['fm_mnist'], results['torchcfm_reference']
    ratios = {'train_speed': a['train_images_per_s'] / b['train_images_per_s'],
              'parameters': a['parameters'] / b['parameters'],
              'flops': a['gflops_per_image_forward'] / b['gflops_per_image_forward']}
    if ref_in_our_loop:
        meta['reference_unet_in_our_loop_images_per_s'] = ref_in_our_loop
        ratios['architecture'] = a['train_images_per_s'] / ref_in_our_loop
        ratios['engineering'] = ref_in_our_loop / b['train_images_per_s']
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    (out / 'side_by_side.json').write_text(json.dumps({'meta': meta, 'results': results, 'ratios': ratios}, indent=2))
    cols = [f'euler_{k}' for k in args.euler_steps.split(',')] + ['dopri5']
    lines = [f"Same budget ({meta['images_seen']:,} training images, batch {args.batch_size}), N = {n}, {hw}; "
             f"real-data floor at this N: FID {floor:.2f}. Quality cells: FID / confidence (NFE).", '',
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
    (out / 'side_by_side.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
