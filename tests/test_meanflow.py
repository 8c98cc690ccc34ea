"""Few-step models: the MeanFlow loss and its identity, the jump sampler, starting from a flow-matching model, and the
scripts' rules for a few-step checkpoint."""
import pytest
import torch
from torch.func import jvp

from conftest import TINY, quiet, tiny_flow
from fm_mnist.checkpoint import read_checkpoint
from fm_mnist.cli import generate_main, train_main
from fm_mnist.flow_matching import FlowMatching
from fm_mnist.meanflow import MeanFlow, math_attention, reflow_pairs
from fm_mnist.unet import UNet


def test_with_r_equal_t_the_loss_is_plain_flow_matching():
    mf = tiny_flow(interval=True)
    mf.weight_power = 0.0                                   # the plain squared error, as flow matching has
    x1, x0, t = torch.rand(4, 1, 28, 28) * 2 - 1, torch.randn(4, 1, 28, 28), torch.rand(4)
    fm = FlowMatching(mf.model, device='cpu')
    torch.testing.assert_close(mf.loss(x1, x0=x0, t=t, r=t), fm.loss(x1, x0=x0, t=t))


def test_the_weighted_loss_shows_the_plain_error_and_keeps_its_gradient():
    "With adaptive weighting the value is the plain squared error (the weighted loss is about 1), the gradient the weighted loss's."
    x1, x0, t, r = torch.rand(4, 1, 28, 28) * 2 - 1, torch.randn(4, 1, 28, 28), torch.rand(4) * 0.5, torch.full((4,), 0.9)
    def loss_and_grad(mf):
        mf.model.zero_grad()
        loss = mf.loss(x1, x0=x0, t=t, r=r)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in mf.model.parameters() if p.grad is not None])
    mf = tiny_flow(interval=True)
    value, grad = loss_and_grad(mf)
    mf.weight_power = 0.0
    plain, plain_grad = loss_and_grad(mf)
    torch.testing.assert_close(value, plain)
    mf.weight_power = 1.0
    mf.model.zero_grad()                                     # the weighted loss written out, as the paper has it
    with math_attention(mf.model):
        u, dudt = jvp(lambda z, t, r: mf.model(z, t, None, r), ((1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * x1, t, r),
                      (x1 - x0, torch.ones(4), torch.zeros(4)))
    sq = (u - (x1 - x0 + (r - t).view(-1, 1, 1, 1) * dudt).detach()).flatten(1).pow(2).sum(1)
    ((sq / (sq.detach() + 1e-3)).mean()).backward()
    weighted_grad = torch.cat([p.grad.flatten() for p in mf.model.parameters() if p.grad is not None])
    torch.testing.assert_close(grad, weighted_grad)
    assert not torch.allclose(grad, plain_grad)


def test_the_total_derivative_is_right():
    mf = tiny_flow(interval=True)
    z, t, r, v = torch.randn(2, 1, 28, 28), torch.rand(2) * 0.5, torch.full((2,), 0.9), torch.randn(2, 1, 28, 28)
    f = lambda z, t, r: mf.model(z, t, None, r)
    with math_attention(mf.model):
        _, dudt = jvp(f, (z, t, r), (v, torch.ones(2), torch.zeros(2)))                              # forward mode
        _, reference = torch.autograd.functional.jvp(f, (z, t, r), (v, torch.ones(2), torch.zeros(2)))  # reverse mode, twice
    torch.testing.assert_close(dudt, reference, atol=1e-4, rtol=1e-4)
    assert all(not m.math for m in mf.model.modules() if hasattr(m, 'math'))   # the fused path is back afterwards


def test_the_loss_trains_and_one_step_samples():
    mf = tiny_flow(interval=True)
    loss = mf.loss(torch.rand(8, 1, 28, 28) * 2 - 1)
    loss.backward()
    assert torch.isfinite(loss) and mf.model.interval_embedding.mlp[-1].weight.grad.abs().sum() > 0
    x, nfe = mf.sample(num_samples=3, num_steps=1, seed=0, return_nfe=True)
    assert x.shape == (3, 1, 28, 28) and nfe == 1
    _, nfe = mf.sample(num_samples=3, num_steps=4, seed=0, solver='midpoint', return_nfe=True)   # an ODE solver: u(x, t, t)
    assert nfe == 8


def test_the_jump_of_an_untrained_interval_equals_euler():
    "A few-step model started from a flow-matching model (interval embedding at zero) jumps like one Euler step."
    mf = tiny_flow(interval=True)
    with torch.no_grad():
        for p in mf.model.interval_embedding.mlp[-1].parameters(): p.zero_()   # as when it starts from a flow-matching model
    assert torch.equal(mf.sample(2, 2, seed=0), mf.sample(2, 2, seed=0, solver='euler'))


def test_conditional_guidance_is_built_in():
    mf = MeanFlow(UNet(base_channels=8, time_emb_dim=16, num_classes=10, interval=True), device='cpu')
    assert mf.guidance_scale == 1.5
    assert torch.isfinite(mf.loss(torch.rand(4, 1, 28, 28), y=torch.arange(4)))
    with pytest.raises(ValueError, match='built in'): mf.sample(2, 1, labels=3, guidance_scale=2.0)
    assert mf.sample(2, 1, labels=3, seed=0).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match='interval=True'): MeanFlow(UNet(base_channels=8, time_emb_dim=16))


def test_reflow_pairs_follow_the_teacher():
    teacher = tiny_flow()
    x0, x1 = reflow_pairs(teacher, 5, num_steps=2, solver='midpoint', seed=0, batch_size=2)
    assert x0.shape == x1.shape == (5, 1, 28, 28)
    torch.testing.assert_close(x1, teacher.sample(5, 2, seed=0, solver='midpoint'), atol=1e-5, rtol=1e-5)


def test_meanflow_from_a_flow_matching_checkpoint_through_the_scripts(trained, tmp_path, mnist_root):
    res = tmp_path / 'mf'
    rc, out, err = quiet(train_main, ['--objective', 'meanflow', '--init_from', str(trained / 'checkpoint_final.pt'),
                                      '--epochs', '1', '--batch_size', '32', '--max_steps_per_epoch', '2', '--num_samples', '4',
                                      '--num_steps', '1', '--device', 'cpu', '--no_progress', '--data_dir', str(mnist_root),
                                      '--results_dir', str(res)])
    assert rc == 0, err
    ckpt = read_checkpoint(res / 'checkpoint_final.pt')
    assert ckpt['_train_config'].objective == 'meanflow' and ckpt['_model_config'].interval
    assert ckpt['_train_config'].optimizer == 'adamw'                   # fine-tuning keeps AdamW unless --optimizer says otherwise
    rc, out, err = quiet(generate_main, ['--results_dir', str(res), '--num_samples', '4', '--num_steps', '1',
                                         '--output_dir', str(tmp_path / 'g')])
    assert rc == 0 and 'meanflow, 1 NFE' in out, err
    rc, out, err = quiet(generate_main, ['--results_dir', str(res), '--num_samples', '4', '--num_steps', '2', '--solver', 'heun',
                                         '--output_dir', str(tmp_path / 'g')])
    assert rc == 0 and 'heun, 4 NFE' in out, err
    rc, _, err = quiet(train_main, ['--objective', 'meanflow', '--init_from', str(trained / 'checkpoint_final.pt'),
                                    '--base_channels', '16', '--results_dir', str(tmp_path / 'x')])
    assert rc == 2 and '--init_from' in err
