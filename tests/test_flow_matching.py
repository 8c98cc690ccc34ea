"The flow-matching path, target and loss against values recomputed by hand; the time convention; training times; optimal-transport pairs."
import pytest
import torch

from fm_mnist import FlowMatching, UNet
from fm_mnist.config import TrainConfig
from fm_mnist.flow_matching import EULER_GRID, ot_pairing


def _flow(**kw):
    fm = FlowMatching(UNet(base_channels=8, time_emb_dim=16, **({'num_classes': kw.pop('num_classes')} if 'num_classes' in kw else {})),
                      device='cpu', **kw)
    torch.nn.init.normal_(fm.model.conv_out.weight, std=0.05)
    return fm


def test_convention_t0_is_noise_t1_is_data():
    x0, x1 = torch.randn(4, 1, 28, 28), torch.rand(4, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(FlowMatching.interpolate(x0, x1, torch.zeros(4)), x0)
    torch.testing.assert_close(FlowMatching.interpolate(x0, x1, torch.ones(4)), x1)


def test_path_and_velocity_oracle():
    x0, x1, t = torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28), torch.tensor([0.1, 0.5, 0.9])
    xt = FlowMatching.interpolate(x0, x1, t)
    for i in range(3): torch.testing.assert_close(xt[i], (1 - t[i]) * x0[i] + t[i] * x1[i])
    h = 1e-3   # u_t is the time derivative of x_t: a finite difference agrees
    fd = (FlowMatching.interpolate(x0, x1, t + h) - FlowMatching.interpolate(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(fd, FlowMatching.target_velocity(x0, x1), atol=1e-3, rtol=1e-3)


def test_loss_equals_hand_computed_mse():
    fm = _flow()
    x0, x1, t = torch.randn(5, 1, 28, 28), torch.rand(5, 1, 28, 28) * 2 - 1, torch.rand(5)
    loss = fm.loss(x1, x0=x0, t=t)
    with torch.no_grad(): v = fm.model((1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * x1, t)
    assert loss.shape == () and loss.dtype == torch.float32
    torch.testing.assert_close(loss, ((v - (x1 - x0)) ** 2).sum() / v.numel())


def test_loss_draws_its_own_noise_and_time():
    fm = _flow()
    loss = fm.loss(torch.rand(4, 1, 28, 28) * 2 - 1)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert fm.model.conv_out.weight.grad is not None
    t = fm.sample_time(1000)
    assert ((0 < t) & (t < 1)).all() and abs(t.mean() - 0.5) < 0.05   # logit-normal by default


def test_ot_pairing_reduces_the_transport_cost_and_keeps_the_noise():
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.rand(32, 1, 28, 28, generator=g) * 2 - 1, torch.randn(32, 1, 28, 28, generator=g)
    p = ot_pairing(x0, x1)
    cost = lambda a: (a - x1).pow(2).sum().item()
    assert cost(p) < cost(x0)
    # optimal: no swap of two pairs lowers the cost
    c = torch.cdist(x1.flatten(1), p.flatten(1)).pow(2)
    for i in range(8):
        for j in range(i + 1, 8): assert c[i, i] + c[j, j] <= c[i, j] + c[j, i] + 1e-3
    assert sorted(p.flatten(1)[:, 0].tolist()) == sorted(x0.flatten(1)[:, 0].tolist())   # a permutation of the noise


def test_ot_pairs_stay_within_a_class():
    g = torch.Generator().manual_seed(1)
    x1, x0 = torch.rand(40, 1, 28, 28, generator=g), torch.randn(40, 1, 28, 28, generator=g)
    y = torch.arange(40) % 4
    p = ot_pairing(x0, x1, y)
    rows = {v: i for i, v in enumerate(x0.flatten(1)[:, 0].tolist())}
    src = torch.tensor([rows[v] for v in p.flatten(1)[:, 0].tolist()])
    assert torch.equal(y[src], y)


def test_ot_coupling_in_the_loss():
    torch.manual_seed(0)
    fm = _flow(coupling='ot', num_classes=10)
    loss = fm.loss(torch.rand(8, 1, 28, 28) * 2 - 1, y=torch.arange(8))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match='coupling'): FlowMatching(UNet(base_channels=8, time_emb_dim=16), coupling='nn')


def test_sample_is_a_method_of_the_class_itself():
    "Defined in the class body (not attached later by another module), so it exists whatever was imported."
    for name in ('sample', 'sample_batches', 'integrate', 'loss'): assert name in vars(FlowMatching), name
    assert _flow().sample(2, 2, seed=0).shape == (2, 1, 28, 28)


def test_grid_share_draws_that_share_of_times_on_the_euler_grid():
    fm = lambda share: FlowMatching(UNet(base_channels=8, time_emb_dim=16), device='cpu', time_sampling='uniform', grid_share=share)
    t = fm(1.0).sample_time(4000)
    assert set(t.tolist()) == set(EULER_GRID) and (t == 0).float().mean() == pytest.approx(0.4, abs=0.03)
    t = fm(0.5).sample_time(4000)
    assert ((t * 4) == (t * 4).round()).float().mean() == pytest.approx(0.5, abs=0.03) and t.min() >= 0 and t.max() <= 1
    plain = fm(0.0)
    torch.manual_seed(0); a = plain.sample_time(100)
    torch.manual_seed(0); assert torch.equal(a, torch.rand(100))     # no share: the same draws as before the option
    with pytest.raises(ValueError, match='grid_share'): fm(1.5)
    assert TrainConfig(grid_share=0.75).build_flow(UNet(base_channels=8, time_emb_dim=16), 'cpu').grid_share == 0.75


def test_grid_times_of_zero_alone_trains_only_where_one_euler_step_looks():
    net = UNet(base_channels=8, time_emb_dim=16)
    flow = TrainConfig(time_sampling='uniform', grid_share=1.0, grid_times=[0]).build_flow(net, 'cpu')
    assert flow.grid_times == (0.0,) and torch.equal(flow.sample_time(500), torch.zeros(500))
    assert TrainConfig().grid_times == EULER_GRID                     # the default, and that of checkpoints without the field
    for bad in ((), (0.5, 1.5), ('a',), 0.0):
        with pytest.raises(ValueError, match='grid_times'): TrainConfig(grid_times=bad)
    with pytest.raises(ValueError, match='grid_times'): FlowMatching(net, device='cpu', grid_times=())


class _Push(torch.nn.Module):
    "A velocity of 3 everywhere: one Euler step carries noise 3 units, out of the pixel range."
    image_shape = (2,)
    def __init__(self, data_range=(-1.0, 1.0)):
        super().__init__()
        self.data_range, self.w = data_range, torch.nn.Parameter(torch.zeros(()))
    def forward(self, x, t, y=None): return torch.full_like(x, 3.0) + self.w


def test_samples_are_clipped_to_the_data_range():
    "Pixels are clipped to [-1, 1]; a model whose data are points (data_range None) keeps its samples as they are."
    pixels = FlowMatching(_Push(), device='cpu').sample(num_samples=5, num_steps=1, seed=0)
    assert pixels.max() == 1.0
    points = FlowMatching(_Push(data_range=None), device='cpu').sample(num_samples=5, num_steps=1, seed=0)
    torch.testing.assert_close(points, torch.randn(5, 2, generator=torch.Generator().manual_seed(0)) + 3.0)
