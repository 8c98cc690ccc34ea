"The Euler sampler on a flow with a closed-form answer, and FlowMatching.sample's contract."
import pytest
import torch

from fm_mnist import FlowMatching, UNet, euler_integrate

MU, S = 3.0, 0.5


def gaussian_velocity(x, t):
    "Marginal velocity of the straight-path flow from N(0, 1) to N(MU, S^2); its flow maps x0 to MU + S x0."
    t = t.reshape(-1, *([1] * (x.ndim - 1)))
    var = (1 - t) ** 2 + (t * S) ** 2
    return MU + (t * S ** 2 - (1 - t)) / var * (x - t * MU)


def test_euler_lands_on_the_target_gaussian():
    x0 = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0))
    x1 = euler_integrate(gaussian_velocity, x0, 200)
    assert abs(x1.mean().item() - MU) < 0.02
    assert abs(x1.std().item() - S) < 0.02


def test_euler_error_shrinks_at_first_order():
    x0 = torch.randn(1000, 1, generator=torch.Generator().manual_seed(1))
    exact = MU + S * x0
    errors = [(euler_integrate(gaussian_velocity, x0, n) - exact).abs().max().item() for n in (4, 8, 16, 32, 64, 128)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert 1.7 < errors[-2] / errors[-1] < 2.3


def test_euler_trajectory():
    x0 = torch.randn(5, 1)
    x1, traj = euler_integrate(gaussian_velocity, x0, 10, return_trajectory=True)
    assert traj.shape == (11, 5, 1)
    torch.testing.assert_close(traj[0], x0)
    torch.testing.assert_close(traj[-1], x1)


def _flow():
    return FlowMatching(UNet(base_channels=8, time_emb_dim=16), device='cpu')


def test_sample_shape_range_and_mode():
    fm = _flow()
    torch.nn.init.normal_(fm.model.conv_out.weight, std=0.5)
    fm.model.train()
    s = fm.sample(num_samples=3, num_steps=4, seed=0)
    assert s.shape == (3, 1, 28, 28) and s.dtype == torch.float32 and s.device.type == 'cpu'
    assert s.min() >= -1 and s.max() <= 1
    assert fm.model.training
    fm.model.eval()
    fm.sample(num_samples=2, num_steps=2)
    assert not fm.model.training


def test_sample_seed_and_batching_and_defaults():
    fm = _flow()
    torch.nn.init.normal_(fm.model.conv_out.weight, std=0.1)
    a = fm.sample(num_samples=6, num_steps=3, seed=7)
    torch.testing.assert_close(a, fm.sample(num_samples=6, num_steps=3, seed=7, batch_size=4))
    assert not torch.equal(a, fm.sample(num_samples=6, num_steps=3, seed=8))
    import inspect
    params = inspect.signature(FlowMatching.sample).parameters
    assert params['num_samples'].default == 64 and params['num_steps'].default == 100


@pytest.mark.parametrize('kw', [{'num_samples': 0}, {'num_steps': 0}, {'num_samples': -2}])
def test_sample_rejects_non_positive(kw):
    with pytest.raises(ValueError):
        _flow().sample(**kw)
