"""Training recipes compared by what they learn per training image and per CPU second.

    python benchmarks/recipe.py --budget images=60000                  # every variant, one epoch of images each
    python benchmarks/recipe.py --budget minutes=10 --variants default,ot,batch64
    python benchmarks/recipe.py --budget images=60000 --variants default --euler100
    python benchmarks/recipe.py --budget images=60000 --variants batch32_lr1e-3 --train_seed 1   # the spread between runs

Each variant is a base recipe with a few settings changed (VARIANTS below), trained from the
same seed on the same batches, either for a fixed number of training images or for a fixed wall-clock budget (the
library's own time planning: a first plan from a measured speed, then the run's own pace up to the deadline). Its EMA
model is then scored by the project's evaluator: N samples (2,000 by default), seed 0, midpoint with 4 steps (8 NFE),
and with --euler100 also Euler with 100 steps; FID (with the real-data floor at the same N), confidence and class TV
from uniform. Results accumulate in NAME.json (a variant already there is skipped unless
--rerun), and NAME.md holds the table. Trained models are kept in --cache, so scoring can be redone without training.
"""
import argparse, json, time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from common import add_common_flags, hardware, setup, write
from fm_mnist.checkpoint import read_checkpoint, flow_from_checkpoint, save_checkpoint
from fm_mnist.config import PRESETS
from fm_mnist.data import load_mnist_tensors
from fm_mnist.evaluation import Evaluator
from fm_mnist.training import measure_step_time, new_train_state, plan_steps, train

# The base of every variant: the `cpu` UNet (0.9M parameters) with the recipe this sweep started from (batch 128, lr 2e-3,
# logit-normal times, warm-up and EMA scaled to the run, AdamW). The sweep's winner, batch 32 at lr 1e-3, became the `cpu`
# recipe, and then Muon its optimiser, at the learning rate the cpu_muon_lr* rows picked (0.005; cpu_muon pins 0.02).
BASE = dict(batch_size=128, lr=2e-3, optimizer='adamw')
# name: (ModelConfig overrides, TrainConfig overrides, what it tests)
V1 = dict(time_sampling='uniform', warmup_steps=200, warmup_fraction=1.0, ema_halflife_fraction=None, ema_decay=0.999)
CPU = dict(batch_size=32, lr=1e-3)   # the cpu recipe's batch and learning rate, the base of the cpu_* variants
VARIANTS = {
    'v1_recipe': ({}, V1, 'the recipe of the first shipped models: uniform times, 200 warm-up steps, EMA decay 0.999'),
    'scaled_schedule': ({}, {**V1, 'warmup_fraction': 0.05, 'warmup_steps': 500}, 'v1 with a warm-up of 5% of the run'),
    'scaled_ema': ({}, {**V1, 'warmup_fraction': 0.05, 'warmup_steps': 500, 'ema_halflife_fraction': 0.1},
                   'and an EMA half-life of 10% of the run'),
    'default': ({}, {}, 'the base: batch 128, lr 2e-3, logit-normal times'),
    'no_ema': ({}, {'ema_decay': 0.0}, 'default without EMA'),
    'ema_5pct': ({}, {'ema_halflife_fraction': 0.05}, 'default, EMA half-life 5% of the run'),
    'ema_20pct': ({}, {'ema_halflife_fraction': 0.2}, 'default, EMA half-life 20% of the run'),
    'ema_0.999': ({}, {'ema_halflife_fraction': None}, 'default with the fixed EMA decay 0.999'),
    'ot': ({}, {'coupling': 'ot'}, 'default with mini-batch optimal-transport pairs'),
    'lr1e-3': ({}, {'lr': 1e-3}, 'default at learning rate 1e-3'),
    'lr4e-3': ({}, {'lr': 4e-3}, 'default at learning rate 4e-3'),
    'batch64': ({}, {'batch_size': 64}, 'default at batch 64 (lr 2e-3)'),

    'batch256_lr4e-3': ({}, {'batch_size': 256, 'lr': 4e-3}, 'batch 256, lr 4e-3'),
    'batch64_lr4e-3': ({}, {'batch_size': 64, 'lr': 4e-3}, 'batch 64, lr 4e-3'),
    'batch64_lr1e-3': ({}, {'batch_size': 64, 'lr': 1e-3}, 'batch 64, lr 1e-3'),
    'batch32': ({}, {'batch_size': 32}, 'batch 32 (lr 2e-3)'),
    'batch32_lr1e-3': ({}, {'batch_size': 32, 'lr': 1e-3}, 'batch 32, lr 1e-3'),
    'batch32_lr4e-3': ({}, {'batch_size': 32, 'lr': 4e-3}, 'batch 32, lr 4e-3'),
    'batch16': ({}, {'batch_size': 16}, 'batch 16 (lr 2e-3)'),
    'batch32_lr5e-4': ({}, {'batch_size': 32, 'lr': 5e-4}, 'batch 32, lr 5e-4'),
    'batch16_lr5e-4': ({}, {'batch_size': 16, 'lr': 5e-4}, 'batch 16, lr 5e-4'),
    'batch16_lr1e-3': ({}, {'batch_size': 16, 'lr': 1e-3}, 'batch 16, lr 1e-3'),
    'batch32_beta2': ({}, {'batch_size': 32, 'adam_beta2': 0.99}, 'batch 32, AdamW beta2 0.99'),
    'batch32_noclip': ({}, {'batch_size': 32, 'grad_clip': 0.0}, 'batch 32, no gradient clipping'),
    'two_blocks': ({'num_res_blocks': 2}, {}, 'two residual blocks per level'),
    'width48': ({'base_channels': 48}, {}, 'base width 48'),
    'width24': ({'base_channels': 24}, {}, 'base width 24'),
    'no_attention': ({'attention': False}, {}, 'no attention at 7x7'),
    # architecture on the cpu recipe (batch 32, lr 1e-3), the sweep's winner
    'cpu_width48': ({'base_channels': 48}, CPU, 'the cpu recipe at base width 48'),
    'cpu_two_blocks': ({'num_res_blocks': 2}, CPU, 'the cpu recipe with two residual blocks per level'),
    'cpu_no_attention': ({'attention': False}, CPU, 'the cpu recipe without attention at 7x7'),
    'cpu_beta2': ({}, {**CPU, 'adam_beta2': 0.99}, 'the cpu recipe with AdamW beta2 0.99'),
    'cpu_muon': ({}, {**CPU, 'optimizer': 'muon', 'muon_lr': 0.02}, 'the cpu recipe with Muon (lr 0.02) for the weight matrices'),
    'cpu_muon_lr0.005': ({}, {**CPU, 'optimizer': 'muon', 'muon_lr': 0.005}, 'the cpu recipe with Muon at lr 0.005'),
    'cpu_muon_lr0.0025': ({}, {**CPU, 'optimizer': 'muon', 'muon_lr': 0.0025}, 'the cpu recipe with Muon at lr 0.0025'),
    'cpu_muon_lr0.01': ({}, {**CPU, 'optimizer': 'muon', 'muon_lr': 0.01}, 'the cpu recipe with Muon at lr 0.01'),
    'cpu_muon_lr0.04': ({}, {**CPU, 'optimizer': 'muon', 'muon_lr': 0.04}, 'the cpu recipe with Muon at lr 0.04'),
    'cpu_muon_two_blocks': ({'num_res_blocks': 2}, {**CPU, 'optimizer': 'muon', 'muon_lr': 0.02}, 'Muon, two residual blocks per level'),
    'cpu_two_blocks_beta2': ({'num_res_blocks': 2}, {**CPU, 'adam_beta2': 0.99},
                             'the cpu recipe, two residual blocks per level, AdamW beta2 0.99'),
    'cpu_two_blocks_mults124': ({'num_res_blocks': 2, 'channel_mults': (1, 2, 4)}, CPU,
                                'the cpu recipe, two residual blocks per level, 128 channels at 7x7'),
    'conditional': ({'num_classes': 10}, {}, 'class-conditional, independent pairs'),
    'conditional_ot': ({'num_classes': 10}, {'coupling': 'ot'}, 'class-conditional, OT pairs within each class'),
}


def run_variant(name, budget_kind, budget, images, labels, device, cache: Path, seed: int):
    "Train one variant (or read it from the cache); returns (flow, facts about the run)."
    mo, to, _ = VARIANTS[name]
    mc, tc = PRESETS['cpu']
    mc, tc = replace(mc, **mo), replace(tc, seed=seed, **(BASE | to))
    path = cache / f'{name}_{budget_kind}{budget:g}_seed{seed}.pt'
    if path.is_file():
        ckpt = read_checkpoint(path)
        return flow_from_checkpoint(ckpt, str(path), device), json.loads(path.with_suffix('.json').read_text())
    if budget_kind == 'images':
        steps = int(budget) // tc.batch_size
        tc = replace(tc, epochs=1, max_steps=steps)
    else:
        tc = replace(tc, epochs=1, minutes=budget)
    state = new_train_state(mc, tc, len(images), device)
    sps = measure_step_time(state, images, labels)
    if budget_kind == 'minutes': plan_steps(state, budget * 60, sps)
    t0 = time.perf_counter()
    train(state, images, labels if mc.num_classes else None, progress=False,
          deadline=t0 + budget * 60 if budget_kind == 'minutes' else None)   # the plan is a first guess; the deadline holds
    seconds = time.perf_counter() - t0
    facts = {'steps': state.step, 'images': state.step * tc.batch_size, 'train_seconds': round(seconds, 1),
             'images_per_s': round(state.step * tc.batch_size / seconds, 1), 'final_loss': sum(state.losses[-50:]) / min(50, len(state.losses)),
             'model_config': asdict(mc), 'train_config': asdict(state.train_config)}
    save_checkpoint(state.checkpoint(), path)
    path.with_suffix('.json').write_text(json.dumps(facts, indent=2))
    return state.ema_flow(), facts


def score(flow, ev, n, seed, solver, steps):
    labels = None if flow.num_classes is None else [i % flow.num_classes for i in range(n)]
    x, nfe = flow.sample(num_samples=n, num_steps=steps, solver=solver, seed=seed, batch_size=500, labels=labels, return_nfe=True)
    r = ev.evaluate(x, floor=False, labels=None if labels is None else torch.tensor(labels))
    return {k: r[k] for k in ('fid', 'confidence', 'class_tv_from_uniform', *(('label_agreement',) if labels else ()))} | {'nfe': nfe}


def markdown(data) -> str:
    m = data['meta']
    trained = f", trained from seed {m['train_seed']}" if m.get('train_seed', m['seed']) != m['seed'] else ''
    lines = [f"Recipes after {m['budget']}{trained} ({m['hardware']}); evaluator N = {m['num_samples']}, seed {m['seed']}, real-data floor "
             f"FID {m['fid_floor']:.2f}. Cells: FID / confidence / class TV.", '',
             '| variant | what changes | steps | train images/s | midpoint, 8 NFE | Euler, 100 NFE |', '| --- | --- | --- | --- | --- | --- |']
    cell = lambda r: f"{r['fid']:.1f} / {r['confidence']:.3f} / {r['class_tv_from_uniform']:.3f}" if r else ''
    for name, r in data['variants'].items():
        lines.append(f"| {name} | {VARIANTS[name][2]} | {r['steps']:,} | {r['images_per_s']:.0f} | {cell(r.get('midpoint_8'))} | "
                     f"{cell(r.get('euler_100'))} |")
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, model=False, num_samples=2000)
    p.add_argument('--budget', default='images=60000', help="'images=N' (training images) or 'minutes=M' (wall clock)")
    p.add_argument('--variants', default=','.join(VARIANTS), help=f'comma-separated, from: {", ".join(VARIANTS)}')
    p.add_argument('--euler100', action='store_true', help='also score with 100 Euler steps (slow on a CPU)')
    p.add_argument('--rerun', action='store_true', help='train again variants already in the results')
    p.add_argument('--cache', default='benchmarks/.cache/recipe', help='where trained models are kept')
    p.add_argument('--name', help='base name of the files written (default: recipe_<budget>, and _train_seedN with --train_seed)')
    p.add_argument('--train_seed', type=int, help='seed of the training runs (default: --seed, which also seeds the samples scored); '
                   'another seed measures the spread between runs')
    args = p.parse_args(argv)
    device = setup(args)
    kind, value = args.budget.split('=')
    budget = float(value)
    train_seed = args.seed if args.train_seed is None else args.train_seed
    name = args.name or f'recipe_{kind}{budget:g}' + (f'_train_seed{train_seed}' if train_seed != args.seed else '')
    out = Path(args.out) / f'{name}.json'
    data = json.loads(out.read_text()) if out.is_file() else {'meta': {}, 'variants': {}}
    images, labels = load_mnist_tensors(args.data_dir, train=True)
    ev = Evaluator(args.data_dir, device=device)
    cache = Path(args.cache); cache.mkdir(parents=True, exist_ok=True)
    data['meta'] = {'budget': f'{budget:g} training images' if kind == 'images' else f'{budget:g} minutes of training',
                    'hardware': hardware(device), 'num_samples': args.num_samples, 'seed': args.seed, 'train_seed': train_seed,
                    'fid_floor': ev.floor(args.num_samples)['fid_floor']}
    for v in args.variants.split(','):
        if v not in VARIANTS: raise SystemExit(f'unknown variant {v!r}; known: {", ".join(VARIANTS)}')
        row = data['variants'].get(v, {})
        if not row or args.rerun:
            flow, facts = run_variant(v, kind, budget, images, labels, device, cache, train_seed)
            row = dict(facts)
        else: flow, _ = run_variant(v, kind, budget, images, labels, device, cache, train_seed)
        row = {k: x for k, x in row.items() if k not in ('model_config', 'train_config')}
        if 'midpoint_8' not in row or args.rerun: row['midpoint_8'] = score(flow, ev, args.num_samples, args.seed, 'midpoint', 4)
        if args.euler100 and ('euler_100' not in row or args.rerun): row['euler_100'] = score(flow, ev, args.num_samples, args.seed, 'euler', 100)
        data['variants'][v] = row
        print(f"{v}: {row['steps']} steps, {row['images_per_s']:.0f} img/s, midpoint 8 NFE FID {row['midpoint_8']['fid']:.1f} "
              f"conf {row['midpoint_8']['confidence']:.3f}" + (f", Euler 100 FID {row['euler_100']['fid']:.1f}" if 'euler_100' in row else ''),
              flush=True)
        write(args.out, name, data, markdown(data))
    print(markdown(data))


if __name__ == '__main__':
    main()
