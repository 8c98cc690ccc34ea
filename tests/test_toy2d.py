"The 2-D warm-up: two moons, the toy velocity MLP, the flow-matching loss, the Euler sampler and a short training run."
import math

import pytest
import torch

from fm_mnist.toy2d import VelocityMLP, euler_sample, toy_fm_loss, train_toy_flow, two_moons


def test_two_moons_lie_on_their_circles_and_are_seeded():
    x = two_moons(101, noise=0.0, generator=torch.Generator().manual_seed(0))
    assert x.shape == (101, 2) and x.dtype == torch.float32
    centre = torch.tensor([0.5, 0.25])
    torch.testing.assert_close((x[:50] + centre).norm(dim=1), torch.ones(50))                            # upper: around (0, 0)
    torch.testing.assert_close((x[50:] + centre - torch.tensor([1.0, 0.5])).norm(dim=1), torch.ones(51))  # lower: around (1, 0.5)
    a, b = (two_moons(8, generator=torch.Generator().manual_seed(1)) for _ in range(2))
    torch.testing.assert_close(a, b)


def test_velocity_mlp_shapes():
    v = VelocityMLP(hidden=16)(torch.randn(5, 2), torch.rand(5))
    assert v.shape == (5, 2) and v.dtype == torch.float32


def test_loss_equals_hand_computation_with_t0_noise_t1_data():
    model = VelocityMLP(hidden=16)
    x0, x1, t = torch.randn(6, 2), two_moons(6), torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    with torch.no_grad():
        v = model((1 - t[:, None]) * x0 + t[:, None] * x1, t)   # t = 0: the noise x0; t = 1: the data x1
    torch.testing.assert_close(toy_fm_loss(model, x1, x0, t), ((v - (x1 - x0)) ** 2).mean())
    # a network that always says 0 scores E|x1 - x0|^2 / 2 exactly
    zero = lambda x, t: torch.zeros_like(x)
    torch.testing.assert_close(toy_fm_loss(zero, x1, x0, t), ((x1 - x0) ** 2).mean())


def test_euler_is_exact_on_straight_paths():
    "The field (x* - x) / (1 - t) moves every point along the straight line to x*: Euler follows it exactly."
    x_star, x0 = torch.tensor([[1.0, -0.5]]), torch.randn(4, 2)
    x1, traj = euler_sample(lambda x, t: (x_star - x) / (1 - t[:, None]), x0, 8, return_trajectory=True)
    ts = torch.linspace(0, 1, 9)[:, None, None]
    assert traj.shape == (9, 4, 2)
    torch.testing.assert_close(x1, x_star.expand(4, 2))
    torch.testing.assert_close(traj, (1 - ts) * x0 + ts * x_star)


def test_euler_on_a_linear_field_and_errors():
    x0 = torch.randn(3, 2)
    # v(x, t) = x: each Euler step multiplies by (1 + 1/n)
    torch.testing.assert_close(euler_sample(lambda x, t: x, x0, 5), x0 * 1.2 ** 5)
    with pytest.raises(ValueError, match='num_steps'): euler_sample(lambda x, t: x, x0, 0)


def test_euler_restores_the_mode_and_keeps_no_graph():
    model = VelocityMLP(hidden=8).train()
    out = euler_sample(model, torch.randn(4, 2), 3)
    assert model.training and not out.requires_grad


def test_short_training_learns_and_is_reproducible():
    data = two_moons(1000, generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = VelocityMLP(hidden=32)
        runs.append((model, train_toy_flow(model, data, num_steps=300, batch_size=128, seed=0)))
    (model, losses), (_, losses_again) = runs
    assert losses == losses_again                                        # same seeds, same run
    assert sum(losses[-50:]) / 50 < 0.85 * sum(losses[:5]) / 5           # the loss went down
    x0 = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    samples = euler_sample(model, x0, 50)
    d_samples = torch.cdist(samples, data).min(1).values.mean()
    d_noise = torch.cdist(x0, data).min(1).values.mean()
    assert d_samples < d_noise / 2                                       # samples moved onto the moons
