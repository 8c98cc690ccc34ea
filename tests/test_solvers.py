"Every ODE solver against a flow with a known answer: its order of accuracy, its NFE, and how sample() uses it."
import math

import pytest
import torch

from fm_mnist.flow_matching import FlowMatching
from fm_mnist.sampler import SOLVERS, guided_velocity, solve_ode
from fm_mnist.unet import UNet


def linear_velocity(x, t):
    "dx/dt = (1 + t) x, whose flow maps x0 to x0 exp(3/2) at t = 1."
    return (1 + t).reshape(-1, *([1] * (x.ndim - 1))) * x


X0 = torch.tensor([[1.0], [-0.5], [2.0]], dtype=torch.float64)
EXACT = X0 * math.exp(1.5)


@pytest.mark.parametrize('solver,order', [('euler', 1), ('midpoint', 2), ('heun', 2), ('rk4', 4)])
def test_fixed_step_solvers_have_their_order(solver, order):
    err = {n: (solve_ode(linear_velocity, X0, n, solver)[0] - EXACT).abs().max().item() for n in (32, 64)}
    assert abs(math.log2(err[32] / err[64]) - order) < 0.15


@pytest.mark.parametrize('solver', ['euler', 'midpoint', 'heun', 'rk4'])
def test_fixed_step_nfe_and_trajectory(solver):
    x1, traj, nfe = solve_ode(linear_velocity, X0, 5, solver, return_trajectory=True)
    assert nfe == 5 * SOLVERS[solver]
    assert traj.shape == (6, 3, 1) and torch.equal(traj[0], X0) and torch.equal(traj[-1], x1)


def test_dopri5_meets_its_tolerance_and_counts_evaluations():
    pytest.importorskip('torchdiffeq')
    loose = solve_ode(linear_velocity, X0, solver='dopri5', rtol=1e-3, atol=1e-3)
    tight = solve_ode(linear_velocity, X0, solver='dopri5', rtol=1e-9, atol=1e-9)
    assert (tight[0] - EXACT).abs().max() < 1e-7
    assert (loose[0] - EXACT).abs().max() < 1e-2
    assert 0 < loose[2] < tight[2]                     # tighter tolerance, more evaluations
    _, traj, _ = solve_ode(linear_velocity, X0, 4, 'dopri5', return_trajectory=True, rtol=1e-8, atol=1e-8)
    assert traj.shape == (5, 3, 1)
    assert torch.allclose(traj[2], X0 * math.exp(0.5 + 0.125), atol=1e-6)  # reported at t = 1/2


def test_unknown_solver_and_bad_steps():
    with pytest.raises(ValueError, match='solver must be one of'): solve_ode(linear_velocity, X0, 4, 'leapfrog')
    with pytest.raises(ValueError, match='num_steps'): solve_ode(linear_velocity, X0, 0, 'rk4')


def test_guidance_combines_both_branches_in_one_call():
    calls = []
    def model(x, t, y):
        calls.append(x.shape[0])
        return torch.where(y[:, None] == 10, torch.full_like(x, 1.0), torch.full_like(x, 3.0))  # v_uncond = 1, v_cond = 3
    x, t, y = torch.zeros(4, 1), torch.zeros(4), torch.tensor([1, 2, 3, 4])
    for w, expected in ((0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (0.5, 2.0)):
        calls.clear()
        assert torch.allclose(guided_velocity(model, y, w, null_label=10)(x, t), torch.full((4, 1), expected))
        assert calls == ([8] if w not in (0.0, 1.0) else [4])   # one call; doubled batch only when both are needed


def tiny_flow(num_classes=None):
    torch.manual_seed(0)
    model = UNet(base_channels=8, time_emb_dim=16, num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any(): p.normal_(std=0.02)   # a non-trivial velocity
    return FlowMatching(model, device='cpu')


@pytest.mark.parametrize('solver', ['midpoint', 'heun', 'rk4'])
def test_sample_with_every_solver_reports_nfe(solver):
    flow = tiny_flow()
    x = flow.sample(3, 4, seed=0, solver=solver)
    assert x.shape == (3, 1, 28, 28) and flow.last_nfe == 4 * SOLVERS[solver]


def test_streamed_batches_equal_one_big_batch():
    flow = tiny_flow(num_classes=10)
    labels = [i % 10 for i in range(7)]
    whole = flow.sample(7, 3, seed=5, labels=labels, guidance_scale=2.0)
    parts = torch.cat(list(flow.sample_batches(7, 3, seed=5, batch_size=3, labels=labels, guidance_scale=2.0)))
    assert torch.allclose(whole, parts, atol=1e-6)


def test_conditional_sampling_follows_the_label_and_checks_it():
    flow = tiny_flow(num_classes=10)
    a = flow.sample(2, 3, seed=0, labels=3, guidance_scale=1.0)
    b = flow.sample(2, 3, seed=0, labels=8, guidance_scale=1.0)
    assert not torch.allclose(a, b)                                     # the label changes the sample
    u = flow.sample(2, 3, seed=0)                                       # no label: unconditional
    assert torch.allclose(u, flow.sample(2, 3, seed=0, labels=3, guidance_scale=0.0), atol=1e-6)  # w = 0 ignores the label
    with pytest.raises(ValueError, match='digits 0-9'): flow.sample(2, 3, labels=[3, 11])
    with pytest.raises(ValueError, match='unconditional'): tiny_flow().sample(2, 3, labels=3)
