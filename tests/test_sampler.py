"""The samplers on flows with closed-form answers (order of accuracy, NFE), guidance, and FlowMatching.sample's contract:
defaults from SampleConfig, seeds, batching, modes, labels, and no NaN image ever returned."""
import inspect, math

import pytest
import torch

from conftest import tiny_flow
from fm_mnist import FlowMatching, UNet, euler_integrate
from fm_mnist.config import SampleConfig
from fm_mnist.sampler import SOLVERS, cycle_labels, guided_velocity, solve_ode

MU, S = 3.0, 0.5


def gaussian_velocity(x, t):
    "Marginal velocity of the straight-path flow from N(0, 1) to N(MU, S^2); its flow maps x0 to MU + S x0."
    t = t.reshape(-1, *([1] * (x.ndim - 1)))
    var = (1 - t) ** 2 + (t * S) ** 2
    return MU + (t * S ** 2 - (1 - t)) / var * (x - t * MU)


def linear_velocity(x, t):
    "dx/dt = (1 + t) x, whose flow maps x0 to x0 exp(3/2) at t = 1."
    return (1 + t).reshape(-1, *([1] * (x.ndim - 1))) * x


X0 = torch.tensor([[1.0], [-0.5], [2.0]], dtype=torch.float64)
EXACT = X0 * math.exp(1.5)


def test_euler_lands_on_the_target_gaussian():
    x0 = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0))
    x1 = euler_integrate(gaussian_velocity, x0, 200)
    assert abs(x1.mean().item() - MU) < 0.02 and abs(x1.std().item() - S) < 0.02


@pytest.mark.parametrize('solver,order', [('euler', 1), ('midpoint', 2), ('heun', 2), ('rk4', 4)])
def test_fixed_step_solvers_have_their_order(solver, order):
    err = {n: (solve_ode(linear_velocity, X0, n, solver)[0] - EXACT).abs().max().item() for n in (32, 64)}
    assert abs(math.log2(err[32] / err[64]) - order) < 0.15
    x1, traj, nfe = solve_ode(linear_velocity, X0, 5, solver, return_trajectory=True)
    assert nfe == 5 * SOLVERS[solver] and traj.shape == (6, 3, 1) and torch.equal(traj[-1], x1)


def test_dopri5_meets_its_tolerance_and_counts_evaluations():
    loose = solve_ode(linear_velocity, X0, solver='dopri5', rtol=1e-3, atol=1e-3)
    tight = solve_ode(linear_velocity, X0, solver='dopri5', rtol=1e-9, atol=1e-9)
    assert (tight[0] - EXACT).abs().max() < 1e-7 and (loose[0] - EXACT).abs().max() < 1e-2
    assert 0 < loose[2] < tight[2]
    _, traj, _ = solve_ode(linear_velocity, X0, 4, 'dopri5', return_trajectory=True, rtol=1e-8, atol=1e-8)
    assert torch.allclose(traj[2], X0 * math.exp(0.5 + 0.125), atol=1e-6)  # reported at t = 1/2


def test_unknown_solver_and_bad_steps():
    with pytest.raises(ValueError, match='solver must be one of'): solve_ode(linear_velocity, X0, 4, 'leapfrog')
    with pytest.raises(ValueError, match='num_steps'): solve_ode(linear_velocity, X0, 0, 'rk4')


def test_guidance_combines_both_branches_in_one_call_and_counts_two_passes():
    calls = []
    def model(x, t, y):
        calls.append(x.shape[0])
        return torch.where(y[:, None] == 10, torch.full_like(x, 1.0), torch.full_like(x, 3.0))  # v_uncond = 1, v_cond = 3
    x, t, y = torch.zeros(4, 1), torch.zeros(4), torch.tensor([1, 2, 3, 4])
    for w, expected, passes in ((0.0, 1.0, 1), (1.0, 3.0, 1), (2.0, 5.0, 2), (0.5, 2.0, 2)):
        calls.clear()
        v, n = guided_velocity(model, y, w, null_label=10)
        assert torch.allclose(v(x, t), torch.full((4, 1), expected)) and n == passes
        assert calls == ([8] if passes == 2 else [4])   # one call; a doubled batch only when both branches are needed


def test_sample_defaults_come_from_sample_config():
    flow = tiny_flow()
    x, nfe = flow.sample(seed=0, num_samples=2, return_nfe=True)
    assert nfe == SampleConfig.num_steps * SOLVERS[SampleConfig.solver]
    assert flow.sample(seed=0).shape[0] == SampleConfig.num_samples
    params = inspect.signature(FlowMatching.sample).parameters
    assert params['num_samples'].default is None and params['guidance_scale'].default is None   # no second copy of a default


def test_sample_shape_range_mode_seed_and_batching():
    flow = tiny_flow()
    flow.model.train()
    s = flow.sample(num_samples=5, num_steps=3, seed=7)
    assert s.shape == (5, 1, 28, 28) and s.dtype == torch.float32 and s.min() >= -1 and s.max() <= 1
    assert flow.model.training                                           # the mode it found
    torch.testing.assert_close(flow.sample(5, 3, seed=7, batch_size=2), s)
    parts = list(flow.sample_batches(5, 3, seed=7, batch_size=2))
    assert [x.shape[0] for x, _, _ in parts] == [2, 2, 1] and all(n == 3 for *_, n in parts)
    torch.testing.assert_close(torch.cat([x for x, _, _ in parts]), s)
    assert not torch.equal(s, flow.sample(5, 3, seed=8))
    x, traj, nfe = flow.sample(2, 4, seed=0, solver='rk4', return_trajectory=True, return_nfe=True)
    assert traj.shape == (5, 2, 1, 28, 28) and nfe == 16 == flow.last_nfe


@pytest.mark.parametrize('kw', [{'num_samples': 0}, {'num_steps': 0}, {'num_samples': -2}, {'solver': 'leapfrog'}])
def test_sample_rejects_bad_arguments(kw):
    with pytest.raises(ValueError): tiny_flow().sample(**kw)


def test_conditional_sampling_labels_guidance_and_nfe():
    flow = tiny_flow(num_classes=10)
    a = flow.sample(2, 3, seed=0, labels=3, guidance_scale=1.0)
    assert not torch.allclose(a, flow.sample(2, 3, seed=0, labels=8, guidance_scale=1.0))   # the label changes the sample
    u = flow.sample(2, 3, seed=0)                                                            # no label: unconditional
    assert torch.allclose(u, flow.sample(2, 3, seed=0, labels=3, guidance_scale=0.0), atol=1e-6)
    _, nfe = flow.sample(10, 3, seed=0, labels=cycle_labels(10, 10), guidance_scale=2.0, return_nfe=True)
    assert nfe == 6                                                                          # 3 guided calls, 2 passes each
    with pytest.raises(ValueError, match='digits 0-9'): flow.sample(2, 3, labels=[3, 11])
    with pytest.raises(ValueError, match='unconditional'): tiny_flow().sample(2, 3, labels=3)
    assert cycle_labels(12, 10) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1] and cycle_labels(3, None) is None


def test_broken_weights_never_give_nan_images():
    flow = tiny_flow()
    with torch.no_grad(): flow.model.conv_out.bias.fill_(float('nan'))
    with pytest.raises(FloatingPointError, match='non-finite'): flow.sample(2, 2, seed=0)


def test_samples_take_the_models_image_shape():
    flow = FlowMatching(UNet(base_channels=8, time_emb_dim=16, image_size=16), device='cpu')
    assert flow.sample(2, 1, seed=0).shape == (2, 1, 16, 16)


@pytest.mark.parametrize('autocast', [(False, torch.float32), (True, torch.bfloat16)])
def test_sampling_precision_is_the_one_training_uses(monkeypatch, autocast):
    import fm_mnist.sampler as sampler
    monkeypatch.setattr(sampler, 'amp_settings', lambda device: autocast)   # what amp_settings decides for this device
    flow, seen = tiny_flow(), []
    flow.model.conv_out.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = flow.sample(2, 2, seed=0)
    assert set(seen) == {autocast[1]} and x.dtype == torch.float32          # the network in it; the samples in float32
