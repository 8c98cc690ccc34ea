"""Weight averages of one training run, side by side: how long an EMA should average.

    python benchmarks/ema.py                          # the cpu recipe, one epoch (60,000 images)
    python benchmarks/ema.py --images 120000 --fractions 0.05,0.2

One run of the `cpu` recipe trains on `--images` images; beside the library's own EMA it keeps one more average per
half-life fraction in `--fractions` (`EMA(halflife_fraction=f)`: a half-life of f of the steps so far). The averages do
not feed back into training, so every row comes from the same weights, and the rows differ only by how they average
them. Each average, and the last step's weights, is scored by the project's evaluator: N samples (2,000 by default),
seed 0, midpoint with 4 steps (8 NFE). Writes ema.json and ema.md.
"""
import argparse
from dataclasses import replace

from common import add_common_flags, hardware, setup, write
from fm_mnist.config import PRESETS
from fm_mnist.data import load_mnist_tensors
from fm_mnist.evaluation import Evaluator
from fm_mnist.training import EMA, measure_step_time, new_train_state, train
from recipe import score


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, model=False, num_samples=2000)
    p.add_argument('--images', type=int, default=60_000, help='training images (default: one epoch)')
    p.add_argument('--fractions', default='0.05,0.1,0.2', help='half-life fractions of the extra averages, comma-separated')
    args = p.parse_args(argv)
    try: fractions = [float(f) for f in args.fractions.split(',')]
    except ValueError: p.error(f'--fractions: comma-separated numbers in (0, 1], got {args.fractions!r}')
    if not all(0 < f <= 1 for f in fractions): p.error(f'--fractions: each in (0, 1], got {args.fractions!r}')
    if args.images < 1: p.error(f'--images must be positive, got {args.images}')
    device = setup(args)
    images, _ = load_mnist_tensors(args.data_dir, train=True)
    mc, tc = PRESETS['cpu']
    tc = replace(tc, seed=args.seed, epochs=1, max_steps=max(1, args.images // tc.batch_size))
    state = new_train_state(mc, tc, len(images), device)
    measure_step_time(state, images)
    extras = {f: EMA(state.flow.model, halflife_fraction=f) for f in fractions}
    def update(st):                             # after every step but the last (train's callback), then once more below
        for e in extras.values(): e.update(st.flow.model)
    train(state, images, every_steps=(1, update), progress=False)
    update(state)
    rows = {f'the library default (half-life {tc.ema_halflife_fraction:.3f} of the steps so far)': state.ema_flow(),
            'no average: the last step\'s weights': state.flow}
    rows |= {f'half-life {f:g} of the steps so far': replace(state, ema=e).ema_flow() for f, e in extras.items()}
    ev = Evaluator(args.data_dir, device=device)
    data = {'meta': {'steps': state.step, 'images': state.step * tc.batch_size, 'optimizer': tc.optimizer,
                     'hardware': hardware(device), 'num_samples': args.num_samples, 'seed': args.seed,
                     'fid_floor': ev.floor(args.num_samples)['fid_floor']},
            'rows': {}}
    for name, flow in rows.items():
        data['rows'][name] = r = score(flow, ev, args.num_samples, args.seed, 'midpoint', 4)
        print(f"{name}: FID {r['fid']:.1f}, confidence {r['confidence']:.3f}, class TV {r['class_tv_from_uniform']:.3f}", flush=True)
    m = data['meta']
    md = [f"Weight averages of one run of the cpu recipe ({m['optimizer']}), {m['steps']:,} steps ({m['images']:,} images) ({m['hardware']}); "
          f"evaluator N = {m['num_samples']}, seed {m['seed']}, midpoint with 4 steps (8 NFE), real-data floor FID {m['fid_floor']:.2f}.",
          '', '| weights | FID | confidence | class TV |', '| --- | --- | --- | --- |']
    md += [f"| {k} | {r['fid']:.1f} | {r['confidence']:.3f} | {r['class_tv_from_uniform']:.3f} |" for k, r in data['rows'].items()]
    write(args.out, 'ema', data, '\n'.join(md))
    print('\n'.join(md))


if __name__ == '__main__':
    main()
