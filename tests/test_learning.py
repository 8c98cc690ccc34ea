"Learning really happens: a tiny UNet overfits a handful of real digits."
import torch

from fm_mnist import FlowMatching, UNet, load_mnist_data


def test_tiny_unet_overfits_real_digits(mnist_root):
    torch.manual_seed(0)
    train_loader, _ = load_mnist_data(batch_size=16, root=mnist_root)
    x1, _ = next(iter(train_loader))
    fm = FlowMatching(UNet(base_channels=16, time_emb_dim=32, attention=False), device='cpu')
    opt = torch.optim.Adam(fm.model.parameters(), lr=3e-3)
    # a fixed evaluation set of (x0, t) so that the comparison is not noise
    g = torch.Generator().manual_seed(1)
    x0_eval, t_eval = torch.randn(x1.shape, generator=g), torch.rand(x1.shape[0], generator=g)
    def eval_loss():
        with torch.no_grad(): return fm.loss(x1, x0=x0_eval, t=t_eval).item()
    initial = eval_loss()
    for _ in range(150):
        loss = fm.loss(x1)
        opt.zero_grad(); loss.backward(); opt.step()
    final = eval_loss()
    assert initial > 1.2
    assert final < 0.5 * initial, (initial, final)
