"The flow-matching path, target and loss against values recomputed by hand; the time convention."
import torch

from fm_mnist import FlowMatching, UNet


def _flow():
    fm = FlowMatching(UNet(base_channels=8, time_emb_dim=16), device='cpu')
    torch.nn.init.normal_(fm.model.conv_out.weight, std=0.05)
    return fm


def test_convention_t0_is_noise_t1_is_data():
    x0, x1 = torch.randn(4, 1, 28, 28), torch.rand(4, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(FlowMatching.interpolate(x0, x1, torch.zeros(4)), x0)
    torch.testing.assert_close(FlowMatching.interpolate(x0, x1, torch.ones(4)), x1)


def test_path_and_velocity_oracle():
    x0, x1, t = torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28), torch.tensor([0.1, 0.5, 0.9])
    xt = FlowMatching.interpolate(x0, x1, t)
    for i in range(3):
        torch.testing.assert_close(xt[i], (1 - t[i]) * x0[i] + t[i] * x1[i])
    torch.testing.assert_close(FlowMatching.target_velocity(x0, x1), x1 - x0)
    # u_t is the time derivative of x_t: a finite difference agrees
    h = 1e-3
    fd = (FlowMatching.interpolate(x0, x1, t + h) - FlowMatching.interpolate(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(fd, x1 - x0, atol=1e-3, rtol=1e-3)


def test_loss_equals_hand_computed_mse():
    fm = _flow()
    x0, x1, t = torch.randn(5, 1, 28, 28), torch.rand(5, 1, 28, 28) * 2 - 1, torch.rand(5)
    loss = fm.loss(x1, x0=x0, t=t)
    with torch.no_grad():
        v = fm.model((1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * x1, t)
    expected = ((v - (x1 - x0)) ** 2).sum() / v.numel()
    assert loss.shape == () and loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)


def test_loss_draws_its_own_noise_and_time():
    fm = _flow()
    loss = fm.loss(torch.rand(4, 1, 28, 28) * 2 - 1)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert fm.model.conv_out.weight.grad is not None


def test_device_read_from_model():
    fm = _flow()
    assert fm.device == torch.device('cpu')
    sample_time = fm.sample_time(6)
    assert sample_time.shape == (6,) and ((0 <= sample_time) & (sample_time <= 1)).all()
