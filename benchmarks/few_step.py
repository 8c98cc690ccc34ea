"""Few-step models against their teacher: MeanFlow fine-tuning, reflow and a distilled flow map, at equal CPU time.

    # the shipped few-step model: 55 minutes from the teacher jumping at t = 0 and refining like the teacher elsewhere
    # (few_step_teacher_targets_55min.json: the same from the previous teacher), then two 15-minute stages of the same
    # with a discriminator, one with more of its times at t = 1/2, and the average of their weights; results/*.json of
    # the same name hold the teacher's rows that --keep keeps (copy few_step_muon_teacher.json to it first; see the
    # results page)
    python benchmarks/few_step.py --teacher unconditional --minutes 55 --batch_size 32 --methods reflow --reflow_pairs 20000 \\
        --pair_seed 13 --teacher_targets --grid_share 1 --grid_times 0,0,0,0,0,0,0.25,0.5,0.75 --name few_step_muon_teacher \\
        --save_reflow few_step_stage1.pt
    python benchmarks/few_step.py --teacher unconditional --minutes 15 --batch_size 32 --methods reflow --reflow_pairs 12000 \\
        --reflow_from few_step_stage1.pt --pair_seed 16 --teacher_targets --grid_share 1 --grid_times 0,0,0,0,0,0,0.25,0.5,0.75 \\
        --adversarial 1 --name few_step_muon_teacher_adversarial --keep --save_reflow few_step_a.pt
    python benchmarks/few_step.py --teacher unconditional --minutes 15 --batch_size 32 --methods reflow --reflow_pairs 12000 \\
        --reflow_from few_step_stage1.pt --pair_seed 16 --teacher_targets --grid_share 1 --grid_times 0,0,0,0.5,0.5,0.5,0.5,0.25,0.75 \\
        --adversarial 1 --name few_step_muon_teacher_adversarial_half --keep --save_reflow few_step_b.pt
    python -c "from fm_mnist.checkpoint import average_for_sampling as avg; avg(['few_step_a.pt', 'few_step_b.pt'], 'fm_mnist/assets/fm_mnist_cpu_few_step.pt')"
    # the shipped one-step model: the first stage, then 15 minutes at t = 0 alone with a discriminator (from both stages
    # it scored worse: few_step_muon_one_step_from_two_stages.json), then 15 more minutes of that from its end, and the
    # average of the two stages' weights
    python benchmarks/few_step.py --teacher unconditional --minutes 15 --batch_size 32 --methods reflow \\
        --reflow_from few_step_stage1.pt --reflow_pairs 12000 --pair_seed 14 --grid_times 0 --grid_share 1 \\
        --adversarial 1 --name few_step_muon_one_step_adversarial --keep --save_reflow one_step_a.pt
    python benchmarks/few_step.py --teacher unconditional --minutes 15 --batch_size 32 --methods reflow \\
        --reflow_from one_step_a.pt --reflow_pairs 12000 --pair_seed 15 --grid_times 0 --grid_share 1 \\
        --adversarial 1 --name few_step_muon_one_step_adversarial_longer --keep --save_reflow one_step_b.pt
    python -c "from fm_mnist.checkpoint import average_for_sampling as avg; avg(['one_step_a.pt', 'one_step_b.pt'], 'fm_mnist/assets/fm_mnist_cpu_one_step.pt')"
    # the same without the discriminator: the one-step model shipped before it
    python benchmarks/few_step.py --teacher unconditional --minutes 15 --batch_size 32 --methods reflow \\
        --reflow_from few_step_stage1.pt --reflow_pairs 12000 --pair_seed 14 --grid_times 0 --grid_share 1 \\
        --name few_step_muon_one_step --keep
    # the second step trained from the model's own jump (not shipped: two steps did not improve; the results page)
    python benchmarks/few_step.py --teacher unconditional --minutes 30 --batch_size 32 --methods reflow \\
        --reflow_from few_step_stage1.pt --reflow_pairs 20000 --pair_seed 15 --own_jump --grid_share 1 \\
        --grid_times 0,0.5 --name few_step_muon_own_jump --keep
    # that one-step stage with the pseudo-Huber loss instead of the squared error (not shipped: the results page; copy
    # few_step_muon_teacher.json to few_step_muon_one_step_huber.json first)
    python benchmarks/few_step.py --teacher unconditional --minutes 15 --batch_size 32 --methods reflow \\
        --reflow_from few_step_stage1.pt --reflow_pairs 12000 --pair_seed 14 --grid_times 0 --grid_share 1 \\
        --loss pseudo_huber --name few_step_muon_one_step_huber --keep
    # the first one-step model, in three stages from the previous teacher (the AdamW model shipped before today's, which
    # `unconditional` named then; git history has its file): 20 minutes of reflow, 30 more with times on the Euler grid,
    # 15 at t = 0 alone
    python benchmarks/few_step.py --teacher unconditional --minutes 20 --batch_size 32 --methods reflow --name few_step_current_teacher \\
        --save_reflow stage1.pt
    python benchmarks/few_step.py --teacher unconditional --minutes 30 --batch_size 32 --methods reflow --reflow_from stage1.pt \\
        --pair_seed 2 --grid_share 0.75 --name few_step_reflow_grid --keep --save_reflow stage2.pt
    python benchmarks/few_step.py --teacher unconditional --minutes 15 --batch_size 32 --methods reflow --reflow_from stage2.pt \\
        --reflow_pairs 12000 --pair_seed 3 --grid_times 0 --grid_share 1 --name few_step_one_step --keep --save_reflow one_step.pt
    # the teacher's flow map distilled, against the 20-minute teacher-targets stage (results/few_step_flowmap.json starts as a
    # copy of few_step_teacher_targets_from_teacher.json)
    python benchmarks/few_step.py --teacher unconditional --minutes 20 --batch_size 32 --methods flowmap --reflow_pairs 12000 \\
        --pair_seed 11 --name few_step_flowmap --keep
    python benchmarks/few_step.py --teacher results/checkpoint_final.pt --minutes 10 --num_samples 500 --methods meanflow
    python benchmarks/few_step.py --teacher unconditional --minutes 20 --batch_size 32 --methods meanflow --keep  # add a method's rows

Every method starts from the teacher's weights (reflow and flowmap: or, with --reflow_from, an earlier model's), is
fine-tuned with AdamW at --lr whatever optimiser trained the teacher, and gets the same wall-clock budget on this machine:

- **MeanFlow**: the teacher's UNet with an interval input (starting at zero), fine-tuned with the MeanFlow loss
  (`--objective meanflow`); sampled with its own jump, one network evaluation per step.
- **Reflow**: pairs (noise, the teacher's sample from that noise with 4 midpoint steps, 8 NFE; the time spent making them
  counts in the budget), then flow matching on those fixed pairs with uniform times (--reflow_times), from the teacher's
  weights (or, with --reflow_from, from an earlier reflow: a further stage on new pairs); sampled with Euler. With
  --grid_share, that share of the training times is drawn from the times that 1, 2 and 4 Euler steps evaluate
  (0, 1/4, 1/2, 3/4: the library's `EULER_GRID`, `TrainConfig.grid_share`): train where the sampler asks. With
  --grid_times 0 --grid_share 1 every training time is t = 0, the only time one Euler step evaluates: a one-step
  distillation of the pairs, which gives up some of the model's 2- and 4-step quality for its 1-step quality. With
  --teacher_targets every time but t = 0 regresses on the teacher's velocity at the pair's straight-line point instead
  of the pair's displacement: one network that jumps at t = 0 and refines like the teacher after it. With --own_jump
  (and --grid_share 1) every grid time but 0 starts instead from where the network's own jump reaches, x0 + t v(x0, 0),
  with the straight velocity from there to the pair's teacher sample as the target: the last Euler step learns to finish
  the network's own jump. With --loss pseudo_huber every reflow target is fitted under the pseudo-Huber distance per
  sample instead of the squared error. With --adversarial W a small discriminator trains beside the network, on real
  MNIST digits against x_t + (1 - t) v, the sample an Euler step from each training point ends on (at t = 0, the
  one-step sample), and the network adds its adversarial term, weighted so that its gradient at the output layer is W
  times the regression's: the regression keeps each noise's digit, the discriminator asks that it look like a real one.

- **Flow map** (`--methods flowmap`): the teacher's trajectories from seeded noise, kept at t = 0, 1/4, 1/2, 3/4 and 1
  (4 midpoint steps, 8 NFE, as reflow's pairs; the time spent making them counts), and the teacher's UNet with an interval
  input (MeanFlow's; or, with --reflow_from, that model's) regressed on their chords: the average velocity u(x_a, a, b)
  on (x_b - x_a) / (b - a) for the intervals that 1, 2 and 4 equal jumps take. It is MeanFlow's average velocity of the
  teacher's own flow, computed by running the teacher instead of learned through the identity; sampled by jumps.

Then every model is scored by the project's evaluator at N samples (seed 0): the few-step models at 1, 2 and 4 NFE, the
teacher at 8 NFE (4 midpoint steps), 100 (Euler) and with 1, 2 and 4 Euler steps. NFE counts network forward passes (a
guided step is two; a few-step model has its guidance built in). Writes NAME.json and NAME.md into --out; --save_meanflow
and --save_reflow export either model for sampling (the shipped few-step model came from --save_reflow).
"""
import argparse, json, sys, time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import add_common_flags, comma_list, hardware, setup, write
from fm_mnist.checkpoint import PRETRAINED, build_model, checkpoint_path, export_for_sampling, read_checkpoint, save_checkpoint, load_flow
from fm_mnist.config import TIME_SAMPLINGS, TrainConfig
from fm_mnist.flow_matching import EULER_GRID, FlowMatching
from fm_mnist.data import load_mnist_tensors
from fm_mnist.evaluation import Evaluator
from fm_mnist.meanflow import MeanFlow, reflow_pairs
from fm_mnist.sampler import cycle_labels
from fm_mnist.training import measure_step_time, new_train_state, plan_steps, train


def score(flow, ev, n, seed, **kw):
    labels = cycle_labels(n, flow.num_classes)
    t0 = time.perf_counter()
    x, nfe = flow.sample(num_samples=n, seed=seed, batch_size=500, labels=labels, return_nfe=True, **kw)
    r = ev.evaluate(x, floor=False, labels=None if labels is None else torch.tensor(labels))
    out = {k: r[k] for k in ('fid', 'confidence', 'class_tv_from_uniform')} | {'nfe': nfe, 'seconds': time.perf_counter() - t0}
    if labels is not None: out['label_agreement'] = r['label_agreement']
    return out


# The teacher is scored at its usual budgets and at the few-step models' ones.
TEACHER_SAMPLERS = {'midpoint, 4 steps': dict(num_steps=4, solver='midpoint'), 'euler, 100 steps': dict(num_steps=100, solver='euler'),
                    **{f'euler, {k} step' + 's' * (k > 1): dict(num_steps=k, solver='euler') for k in (1, 2, 4)}}


def teacher_model(ckpt, source, interval: bool):
    "The teacher's EMA weights in a fresh UNet, with an interval input (at zero) when `interval`."
    mc = replace(ckpt['_model_config'], interval=interval)
    model = mc.build()
    missing, unexpected = model.load_state_dict(build_model(ckpt, source).state_dict(), strict=False)
    assert not unexpected and all(k.startswith('interval_embedding.') for k in missing)
    return mc, model


def fine_tune_config(ckpt, minutes, args, **kw):
    "The teacher's TrainConfig for a fine-tune of `minutes`: AdamW at --lr, whatever optimiser trained the teacher."
    return replace(ckpt['_train_config'], lr=args.lr, optimizer='adamw', minutes=minutes, max_steps=None, epochs=1,
                   warmup_fraction=0.02, batch_size=args.batch_size, max_steps_per_epoch=None, seed=args.seed, **kw)


def run_meanflow(ckpt, source, images, labels, minutes, args, device, out_dir):
    start = time.perf_counter()
    mc, model = teacher_model(ckpt, source, interval=True)
    tc = fine_tune_config(ckpt, minutes, args, objective='meanflow', time_sampling='logit_normal',
                          meanflow_interval_share=args.interval_share)
    state = new_train_state(mc, tc, len(images), device, model=model)
    sps = measure_step_time(state, images, labels)
    plan_steps(state, minutes * 60 - (time.perf_counter() - start), sps)
    print(f'meanflow: {state.total_steps} steps of {tc.batch_size} ({tc.batch_size / sps:.0f} images/s)', flush=True)
    train(state, images, labels if mc.num_classes else None, progress=args.progress, deadline=start + minutes * 60)
    path = save_checkpoint(state.checkpoint(), out_dir / 'meanflow_checkpoint.pt')
    return state.ema_flow(), {'steps': state.step, 'images_per_s': tc.batch_size / sps, 'minutes': (time.perf_counter() - start) / 60,
                              'checkpoint': str(path)}


PSEUDO_HUBER_C = 0.00054 * 28   # Song & Dhariwal's c = 0.00054 sqrt(d) for d = 28 * 28 values in [-1, 1]


def pseudo_huber(v, target, c: float = PSEUDO_HUBER_C):
    """The pseudo-Huber distance per sample, sqrt(|v - target|^2 + c^2) - c, averaged over the batch (Song & Dhariwal 2023,
    consistency models; Lee et al. 2024 for rectified flows): about |v - target| once the error is well above c, so a
    sample far off pulls no harder than one near, where the squared error lets the worst samples dominate."""
    d = (v.float() - target.float()).flatten(1)
    return (torch.sqrt(d.pow(2).sum(1) + c * c) - c).mean()


class Critic(nn.Module):
    """A small discriminator for 28 x 28 digits (three strided convolutions and a linear read-out, spectrally normalised;
    about 0.43 M parameters) and its Adam optimiser, trained beside the network on real MNIST digits against the samples
    the network's Euler steps end on. Hinge loss, as in adversarial diffusion distillation (Sauer et al. 2023); the
    network's term is weighted adaptively as in VQGAN (Esser et al. 2021): `weight` times the ratio of the regression's
    gradient to the adversarial term's at the network's output layer, so the adversarial pull is a fixed multiple of the
    regression's whatever their scales."""
    def __init__(self, images: torch.Tensor, weight: float, device, seed: int):
        super().__init__()
        sn = nn.utils.spectral_norm
        with torch.random.fork_rng():   # its own initial weights; the training's random stream is left as it was
            torch.manual_seed(seed)
            self.net = nn.Sequential(sn(nn.Conv2d(1, 64, 4, 2, 1)), nn.LeakyReLU(0.2), sn(nn.Conv2d(64, 128, 4, 2, 1)), nn.LeakyReLU(0.2),
                                     sn(nn.Conv2d(128, 256, 3, 2, 1)), nn.LeakyReLU(0.2), nn.Flatten(), sn(nn.Linear(256 * 16, 1))).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=2e-4, betas=(0.0, 0.99))
        self.images, self.weight = images, weight
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, regression: torch.Tensor, fake: torch.Tensor, out_weight: torch.Tensor) -> torch.Tensor:
        """One discriminator step on a batch of real digits against `fake` (detached), then the network's adversarial term
        on `fake`, weighted against `regression` at the output layer `out_weight`."""
        real = self.images[torch.randint(len(self.images), (fake.shape[0],), generator=self.generator)].to(fake.device)
        self.opt.zero_grad(set_to_none=True)
        (F.relu(1 - self.net(real)).mean() + F.relu(1 + self.net(fake.detach().float())).mean()).backward()
        self.opt.step()
        adversarial = -self.net(fake.float()).mean()
        g_reg, = torch.autograd.grad(regression, out_weight, retain_graph=True)
        g_adv, = torch.autograd.grad(adversarial, out_weight, retain_graph=True)
        return self.weight * (g_reg.norm() / (g_adv.norm() + 1e-4)).clamp(max=1e4).detach() * adversarial


class PairTargets(FlowMatching):
    """Flow matching on fixed (noise, teacher sample) pairs, the same network and settings as `flow`: the pair's
    displacement at its straight-line point, as plain reflow, under `distance` (the squared error, or `pseudo_huber`),
    plus, with a `critic`, its adversarial term on x_t + (1 - t) v, the sample an Euler step from each training point to
    t = 1 ends on (at t = 0: the one-step sample); the subclasses give targets of their own."""
    distance = staticmethod(F.mse_loss)
    critic = None

    def __init__(self, flow: FlowMatching):
        self.__dict__.update(flow.__dict__)   # the same network, settings and time sampling

    def loss(self, x1, x0=None, t=None, y=None):
        x0, x1, t, xt, target, _ = self.pairs(x1, x0, t)
        return self.fit(xt, t, target, y)

    def fit(self, xt, t, target, y=None):
        "The network's velocity at `(xt, t)` against `target`: the distance, and the critic's term if there is one."
        if self.num_classes is None: v = self.model(xt, t)
        else: v = self.model(xt, t, None if y is None else self.drop_labels(y.to(self.device)))
        loss = self.distance(v, target)
        if self.critic is None: return loss
        return loss + self.critic(loss, xt + (1 - t).view(-1, 1, 1, 1) * v, self.model.conv_out.weight)

    def pairs(self, x1, x0, t):
        """`(x0, x1, t, x_t, target, later)`: the batch on the device (noise drawn when the speed measurement comes without
        pairs), the straight-line point, the pair's displacement as the target, and which times are not 0."""
        x1 = x1.to(self.device)
        x0 = self.draw_noise(x1) if x0 is None else x0.to(self.device)
        t = self.sample_time(x1.shape[0]) if t is None else t.to(self.device)
        return x0, x1, t, self.interpolate(x0, x1, t), self.target_velocity(x0, x1), t != 0


class TeacherTargets(PairTargets):
    """Flow matching on fixed (noise, teacher sample) pairs whose target is the pair's displacement x1 - x0 at t = 0, where
    one Euler step jumps, and the teacher's own velocity at the pair's straight-line point at every other training time
    (with --grid_share 1, the grid's other points): one network that jumps like a one-step model and then refines like its
    teacher (unconditional models)."""
    def __init__(self, flow: FlowMatching, teacher: FlowMatching):
        super().__init__(flow)
        self.teacher = teacher
        teacher.model.eval().requires_grad_(False)   # fixed targets: no dropout noise, no gradients

    def loss(self, x1, x0=None, t=None, y=None):
        x0, x1, t, xt, target, later = self.pairs(x1, x0, t)
        if later.any():   # the teacher is asked only where its velocity is the target
            with torch.no_grad(): target[later] = self.teacher.model(xt[later], t[later]).float()
        return self.fit(xt, t, target)


class OwnJumpTargets(PairTargets):
    """Flow matching on fixed (noise, teacher sample) pairs whose target is the pair's displacement x1 - x0 at t = 0, where
    one Euler step jumps; at every other training time t (grid times, all below 1) the input is where this network's own
    jump reaches, x_t = x0 + t v(x0, 0) (its current weights, no gradient), and the target is the straight velocity from
    there to the teacher's sample, (x1 - x_t) / (1 - t). The later Euler steps learn to finish what this network's first
    step started, at the points sampling gives them, instead of at the pair's straight-line point: a distillation of each
    step count's last step, with nothing to average (x_t is a function of x0)."""
    def loss(self, x1, x0=None, t=None, y=None):
        x0, x1, t, xt, target, later = self.pairs(x1, x0, t)
        if later.any():
            tl = t[later].reshape(-1, 1, 1, 1)
            with torch.no_grad(): jump = self.model(x0[later], torch.zeros_like(t[later])).float()
            xt[later] = x0[later] + tl * jump
            target[later] = (x1[later] - xt[later]) / (1 - tl)
        return self.fit(xt, t, target)


def run_reflow(teacher, ckpt, source, start_ckpt, images, labels, minutes, args, device, out_dir):
    start = time.perf_counter()
    n = args.reflow_pairs
    y = None if teacher.num_classes is None else torch.tensor(cycle_labels(n, teacher.num_classes))
    seed = args.seed + 1 if args.pair_seed is None else args.pair_seed
    x0, x1 = reflow_pairs(teacher, n, num_steps=4, solver='midpoint', seed=seed, labels=y, progress=args.progress)
    pair_minutes = (time.perf_counter() - start) / 60
    print(f'reflow: {n} pairs in {pair_minutes:.1f} min', flush=True)
    if start_ckpt is not None:   # a further stage of an earlier reflow: its weights, new pairs
        mc, model = start_ckpt['_model_config'], build_model(start_ckpt, args.reflow_from)
    else: mc, model = teacher_model(ckpt, source, interval=False)
    tc = fine_tune_config(ckpt, minutes, args, objective='flow_matching', coupling='independent', time_sampling=args.reflow_times,
                          grid_share=args.grid_share, grid_times=args.grid_times)
    state = new_train_state(mc, tc, n, device, model=model)
    if args.teacher_targets: state.flow = TeacherTargets(state.flow, teacher)
    elif args.own_jump: state.flow = OwnJumpTargets(state.flow)
    elif args.loss != 'mse' or args.adversarial: state.flow = PairTargets(state.flow)
    if args.loss == 'pseudo_huber': state.flow.distance = pseudo_huber
    if args.adversarial: state.flow.critic = Critic(images, args.adversarial, device, args.seed)
    sps = measure_step_time(state, x1, y)
    plan_steps(state, minutes * 60 - (time.perf_counter() - start), sps)
    print(f'reflow: {state.total_steps} steps of {tc.batch_size}', flush=True)
    train(state, x1, y, noise=x0, progress=args.progress, deadline=start + minutes * 60)
    path = save_checkpoint(state.checkpoint(), out_dir / 'reflow_checkpoint.pt')
    return state.ema_flow(), {'pairs': n, 'pair_minutes': pair_minutes, 'steps': state.step, 'checkpoint': str(path),
                              'minutes': (time.perf_counter() - start) / 60}


class FlowMapTargets(MeanFlow):
    """Distillation of the teacher's flow map on a grid of times: each training item is one noise's teacher trajectory
    `(K + 1, 28, 28)`, the teacher's states at the grid times (its own ODE); the network's average velocity u(x_a, a, b)
    from grid time a to grid time b regresses on the chord (x_b - x_a) / (b - a), for the intervals that 1, 2 and 4 equal
    jumps take (each number of jumps equally often). In training every jump starts on the teacher's own trajectory, so
    perfect jumps would land where the teacher's ODE does, one jump on its whole, two on its two halves; in sampling each
    jump starts where the one before landed (unconditional models)."""
    def __init__(self, flow: MeanFlow, times: torch.Tensor, jumps=(1, 2, 4)):
        self.__dict__.update(flow.__dict__)   # the same network and settings
        self.times = times.to(self.device)   # (K + 1,) the grid, 0 ... 1
        K, pairs, weights = len(times) - 1, [], []
        for k in jumps:   # k equal jumps: the grid indices they start and end at
            if K % k: raise ValueError(f'{k} equal jumps do not fall on a grid of {K} intervals')
            pairs += [(i * K // k, (i + 1) * K // k) for i in range(k)]
            weights += [1 / (k * len(jumps))] * k
        self.starts, self.ends = (torch.tensor(c, device=self.device) for c in zip(*pairs))
        self.weights = torch.tensor(weights, device=self.device)

    def loss(self, x1, x0=None, t=None, y=None):
        traj = x1.to(self.device)   # (B, K + 1, 28, 28): the trajectories, not images
        k = torch.multinomial(self.weights, traj.shape[0], replacement=True)
        rows = torch.arange(traj.shape[0], device=self.device)
        xa, xb = traj[rows, self.starts[k]].unsqueeze(1), traj[rows, self.ends[k]].unsqueeze(1)
        a, b = self.times[self.starts[k]], self.times[self.ends[k]]
        target = (xb - xa) / (b - a).view(-1, 1, 1, 1)
        return F.mse_loss(self.model(xa, a, None, b).float(), target)


FLOWMAP_INTERVALS = 4   # the flow map's grid: t = 0, 1/4, 1/2, 3/4, 1, where 1, 2 and 4 equal jumps start and end


@torch.no_grad()
def teacher_trajectories(teacher, n: int, steps_per_interval: int, seed: int, progress: bool) -> torch.Tensor:
    """`(n, FLOWMAP_INTERVALS + 1, 28, 28)`: the teacher's midpoint ODE from seeded noise (the noise `reflow_pairs` draws
    for that seed), its states at the flow map's grid (`steps_per_interval` midpoint steps between grid points; the last
    state clipped like a sample)."""
    from tqdm import tqdm
    x0, out = torch.randn(n, *teacher.image_shape, generator=torch.Generator().manual_seed(seed)), []
    teacher.model.eval()
    for i in tqdm(range(0, n, 500), disable=not progress, desc='teacher trajectories'):
        _, tr, _ = teacher.integrate(x0[i:i + 500].to(teacher.device), None, FLOWMAP_INTERVALS * steps_per_interval, 'midpoint',
                                     None, True, 1e-4, 1e-4)
        tr = tr[::steps_per_interval].float()   # (FLOWMAP_INTERVALS + 1, B, 1, 28, 28)
        tr[-1] = teacher.clip(tr[-1])
        out.append(tr[:, :, 0].transpose(0, 1).cpu())
    return torch.cat(out)


def run_flowmap(teacher, ckpt, source, start_ckpt, minutes, args, device, out_dir):
    start = time.perf_counter()
    n, seed = args.reflow_pairs, args.seed + 1 if args.pair_seed is None else args.pair_seed
    traj = teacher_trajectories(teacher, n, args.flowmap_substeps, seed, args.progress)
    traj_minutes = (time.perf_counter() - start) / 60
    print(f'flowmap: {n} teacher trajectories in {traj_minutes:.1f} min', flush=True)
    mc, model = teacher_model(start_ckpt or ckpt, args.reflow_from or source, interval=True)
    tc = fine_tune_config(ckpt, minutes, args, objective='meanflow', coupling='independent', grid_share=0.0)
    state = new_train_state(mc, tc, n, device, model=model)
    state.flow = FlowMapTargets(state.flow, torch.linspace(0, 1, FLOWMAP_INTERVALS + 1), args.flowmap_jumps)
    sps = measure_step_time(state, traj)
    plan_steps(state, minutes * 60 - (time.perf_counter() - start), sps)
    print(f'flowmap: {state.total_steps} steps of {tc.batch_size}', flush=True)
    train(state, traj, progress=args.progress, deadline=start + minutes * 60)
    path = save_checkpoint(state.checkpoint(), out_dir / 'flowmap_checkpoint.pt')
    return state.ema_flow(), {'pairs': n, 'pair_minutes': traj_minutes, 'steps': state.step, 'checkpoint': str(path),
                              'minutes': (time.perf_counter() - start) / 60}


def markdown(data) -> str:
    m = data['meta']
    agree = 'label_agreement' in next(iter(data['rows']))
    budget = (f"the reflow a further {m['minutes']:g} minutes of CPU time from {m['reflow_from']}" if m.get('reflow_from')
              else f"{m['minutes']:g} minutes of CPU time each")
    lines = [f"Few-step models from {m['teacher']}, {budget} ({m['hardware']}); evaluator N = "
             f"{m['num_samples']}, seed {m['seed']}, real-data floor FID {m['fid_floor']:.2f}. NFE: network forward passes per "
             f"sample.", '',
             '| model | sampler | NFE | FID | confidence | class TV' + (' | agreement with the requested digit' if agree else '') + ' |',
             '| --- | --- | --- | --- | --- | ---' + (' | ---' if agree else '') + ' |']
    for r in data['rows']:
        lines.append(f"| {r['model']} | {r['sampler']} | {r['nfe']} | {r['fid']:.1f} | {r['confidence']:.3f} | "
                     f"{r['class_tv_from_uniform']:.3f}" + (f" | {r['label_agreement']:.3f}" if agree else '') + ' |')
    lines += ['', 'Costs: ' + '; '.join(f"{k}: {v}" for k, v in data['costs'].items())]
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, model=False, num_samples=2000)
    p.add_argument('--teacher', default='unconditional', help='a shipped model\'s name or a checkpoint')
    p.add_argument('--minutes', type=float, default=45, help='wall-clock budget of each method')
    p.add_argument('--methods', default='meanflow,reflow')
    p.add_argument('--lr', type=float, default=3e-4, help='fine-tuning learning rate')
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--interval_share', type=float, default=0.25, help='MeanFlow: share of training pairs with r > t')
    p.add_argument('--reflow_pairs', type=int, default=20_000, help='reflow and flowmap: how many teacher pairs (trajectories)')
    p.add_argument('--reflow_times', default='uniform', choices=TIME_SAMPLINGS, help='reflow\'s training times: uniform, since a '
                   'one-step jump starts at t = 0, which logit-normal times (a teacher\'s own default) rarely sample')
    p.add_argument('--grid_share', type=float, default=0.0, help='reflow: share of training times drawn from the points that 1, 2 '
                   'and 4 Euler steps evaluate (0, 1/4, 1/2, 3/4; 0 twice as often); the rest follow --reflow_times')
    p.add_argument('--grid_times', type=comma_list(float, 0, 1, 'times'), default=EULER_GRID, help='reflow: the times --grid_share draws from, comma-separated '
                   '(default: those of 1, 2 and 4 Euler steps; 0: one step only)')
    p.add_argument('--reflow_from', help='reflow and flowmap: start from this model (an earlier reflow) instead of the teacher; the cost '
                   'line then counts this stage only')
    p.add_argument('--pair_seed', type=int, help='reflow and flowmap: seed of the pairs\' noise (default: --seed + 1)')
    p.add_argument('--teacher_targets', action='store_true', help='reflow: train every time but t = 0 on the teacher\'s '
                   'velocity at the pair\'s straight-line point instead of the pair\'s displacement (unconditional teachers): '
                   'a one-step jump, then the teacher\'s refinement, in one network')
    p.add_argument('--own_jump', action='store_true', help='reflow: at every grid time but 0, start from where the network\'s own '
                   'jump reaches and regress on the straight velocity to the pair\'s teacher sample (needs --grid_share 1)')
    p.add_argument('--loss', default='mse', choices=('mse', 'pseudo_huber'), help='reflow: the distance to the targets, the '
                   'squared error or the pseudo-Huber distance per sample (sqrt(|error|^2 + c^2) - c, c = 0.00054 * 28)')
    p.add_argument('--adversarial', type=float, default=0.0, help='reflow: add a discriminator\'s term on the samples the Euler '
                   'steps end on, weighted this much against the regression at the output layer (0: none; the shipped models: 1)')
    p.add_argument('--flowmap_jumps', type=comma_list(int, 1, 4, 'jumps'), default=(1, 2, 4), help='flowmap: the numbers of '
                   'equal jumps trained (each equally often), comma-separated, from 1, 2 and 4')
    p.add_argument('--flowmap_substeps', type=int, default=1, help='flowmap: the teacher\'s midpoint steps per quarter of its '
                   'trajectory (1: 4 steps, 8 NFE, as reflow\'s pairs)')
    p.add_argument('--work', default='benchmarks/.cache/few_step', help='where the trained models are kept')
    p.add_argument('--save_meanflow', help='export the MeanFlow model for sampling to this path')
    p.add_argument('--save_reflow', help='export the reflowed model for sampling to this path')
    p.add_argument('--save_flowmap', help='export the flow-map model for sampling to this path')
    p.add_argument('--name', default='few_step')
    p.add_argument('--keep', action='store_true', help='keep what an existing NAME.json from the same teacher, N and seed '
                   'holds: the rows of the methods this run does not train, and the teacher scores it has')
    p.add_argument('--progress', action='store_true')
    args = p.parse_args(argv)
    if not 0 <= args.grid_share <= 1: p.error(f'--grid_share must be in [0, 1], got {args.grid_share}')
    if any(FLOWMAP_INTERVALS % k for k in args.flowmap_jumps): p.error(f'--flowmap_jumps must be 1, 2 or 4, got {args.flowmap_jumps}')
    if args.flowmap_substeps < 1: p.error(f'--flowmap_substeps must be at least 1, got {args.flowmap_substeps}')
    if args.teacher_targets and 'reflow' not in args.methods: p.error('--teacher_targets is a setting of --methods reflow')
    if args.teacher_targets and not (args.grid_share > 0 and 0 in args.grid_times):
        p.error('--teacher_targets learns the jump at t = 0 only: give --grid_share > 0 and a --grid_times that includes 0')
    if args.loss != 'mse' and 'reflow' not in args.methods: p.error('--loss is a setting of --methods reflow')
    if args.adversarial < 0: p.error(f'--adversarial must be at least 0, got {args.adversarial}')
    if args.adversarial and 'reflow' not in args.methods: p.error('--adversarial is a setting of --methods reflow')
    if args.own_jump and ('reflow' not in args.methods or args.teacher_targets):
        p.error('--own_jump is a setting of --methods reflow, instead of --teacher_targets')
    if args.own_jump and not (args.grid_share == 1 and 0 in args.grid_times and max(args.grid_times) < 1):
        p.error('--own_jump trains at grid times only: give --grid_share 1 and --grid_times below 1 that include 0')
    device = setup(args)
    work = Path(args.work); work.mkdir(parents=True, exist_ok=True)
    source = str(checkpoint_path(args.teacher))
    ckpt = read_checkpoint(source)
    start_ckpt = read_checkpoint(args.reflow_from) if args.reflow_from else None   # read now: a bad path fails before any work
    teacher = load_flow(source, device)
    if args.teacher_targets and teacher.num_classes is not None: p.error('--teacher_targets needs an unconditional teacher')
    if args.adversarial and teacher.num_classes is not None:
        p.error('--adversarial needs an unconditional teacher (its discriminator does not see the labels)')
    if 'flowmap' in args.methods and teacher.num_classes is not None: p.error('--methods flowmap needs an unconditional teacher')
    images, labels = load_mnist_tensors(args.data_dir, train=True)
    ev = Evaluator(args.data_dir, device=device)
    n = args.num_samples
    rows, costs = [], {'teacher': f"{ckpt['step']} steps of training"}
    def add(model, sampler, r):
        rows.append({'model': model, 'sampler': sampler, **r})
        print(f"{model} {sampler}: NFE {r['nfe']}, FID {r['fid']:.1f}, confidence {r['confidence']:.3f}", flush=True)
    previous = Path(args.out) / f'{args.name}.json'
    old = json.loads(previous.read_text()) if args.keep and previous.is_file() else None
    if old and (old['meta']['num_samples'], old['meta']['seed']) != (n, args.seed):
        print(f'--keep: {previous} was scored at another N or seed; nothing of it is kept', flush=True); old = None
    scored = {r['sampler']: r for r in old['rows'] if r['model'] == 'teacher'} if old else {}
    for sampler, kw in TEACHER_SAMPLERS.items():
        if sampler in scored: rows.append(scored[sampler])
        else: add('teacher', sampler, score(teacher, ev, n, args.seed, **kw))
    if 'meanflow' in args.methods:
        mf, facts = run_meanflow(ckpt, source, images, labels, args.minutes, args, device, work)
        costs['meanflow'] = f"{facts['minutes']:.1f} min, {facts['steps']} steps at {facts['images_per_s']:.0f} images/s"
        for k in (1, 2, 4): add('meanflow', f'jump, {k} step' + 's' * (k > 1), score(mf, ev, n, args.seed, num_steps=k))
        if args.save_meanflow:
            export_for_sampling(facts['checkpoint'], args.save_meanflow)
            print(f'exported: {args.save_meanflow}', flush=True)
    if 'reflow' in args.methods:
        rf, facts = run_reflow(teacher, ckpt, source, start_ckpt, images, labels, args.minutes, args, device, work)
        costs['reflow'] = (f"{facts['minutes']:.1f} min: {facts['pairs']} teacher pairs in {facts['pair_minutes']:.1f} min, "
                           f"then {facts['steps']} steps" + (f" from {args.reflow_from}" if args.reflow_from else '')
                           + (f", {args.grid_share:g} of the times on " + ('the Euler grid' if args.grid_times == EULER_GRID else
                              f"t = {', '.join(f'{g:g}' for g in args.grid_times)}") if args.grid_share else '')
                           + (", the teacher's velocity as the target at t > 0" if args.teacher_targets else '')
                           + (", inputs at t > 0 from the model's own jump" if args.own_jump else '')
                           + (', the pseudo-Huber loss' if args.loss == 'pseudo_huber' else '')
                           + (f', a discriminator weighted {args.adversarial:g}' if args.adversarial else ''))
        for k in (1, 2, 4): add('reflow', f'euler, {k} step' + 's' * (k > 1), score(rf, ev, n, args.seed, num_steps=k, solver='euler'))
        if args.save_reflow:
            export_for_sampling(facts['checkpoint'], args.save_reflow)
            print(f'exported: {args.save_reflow}', flush=True)
    if 'flowmap' in args.methods:
        fm, facts = run_flowmap(teacher, ckpt, source, start_ckpt, args.minutes, args, device, work)
        costs['flowmap'] = (f"{facts['minutes']:.1f} min: {facts['pairs']} teacher trajectories in {facts['pair_minutes']:.1f} min, "
                            f"then {facts['steps']} steps" + (f" from {args.reflow_from}" if args.reflow_from else '')
                            + f", jumps {', '.join(map(str, args.flowmap_jumps))}")
        for k in (1, 2, 4): add('flowmap', f'jump, {k} step' + 's' * (k > 1), score(fm, ev, n, args.seed, num_steps=k))
        if args.save_flowmap:
            export_for_sampling(facts['checkpoint'], args.save_flowmap)
            print(f'exported: {args.save_flowmap}', flush=True)
    if old is not None:   # what this run did not train stays
        kept = [m for m in ('meanflow', 'reflow', 'flowmap') if m not in args.methods]
        order = ['teacher', 'meanflow', 'reflow', 'flowmap']
        rows = sorted(rows + [r for r in old['rows'] if r['model'] in kept], key=lambda r: order.index(r['model']))
        costs = {k: costs[k] if k in costs else old['costs'][k] for k in order if k in costs or (k in kept and k in old['costs'])}
    teacher_name = old['meta']['teacher'] if old else f'the shipped {args.teacher} model' if args.teacher in PRETRAINED else source
    data = {'meta': {'teacher': teacher_name, 'minutes': args.minutes, 'hardware': hardware(device), 'num_samples': n, 'seed': args.seed,
                     'fid_floor': ev.floor(n)['fid_floor'], 'lr': args.lr, 'interval_share': args.interval_share,
                     'reflow_times': args.reflow_times, 'grid_share': args.grid_share, 'grid_times': args.grid_times, 'reflow_from': args.reflow_from,
                     'teacher_targets': args.teacher_targets, 'own_jump': args.own_jump, 'loss': args.loss, 'adversarial': args.adversarial, 'flowmap_jumps': args.flowmap_jumps,
                     'flowmap_substeps': args.flowmap_substeps},
            'rows': rows, 'costs': costs}
    write(args.out, args.name, data, markdown(data))
    print(markdown(data))
    return 0


if __name__ == '__main__':
    sys.exit(main())
