"Shapes and dtypes through every module of the network."
import pytest
import torch

from fm_mnist import ResidualBlock, TimeEmbedding, UNet
from fm_mnist.time_embedding import sinusoidal_embedding
from fm_mnist.unet import Downsample, SelfAttention, Upsample, count_parameters


def test_sinusoidal_embedding_values_and_shape():
    e = sinusoidal_embedding(torch.tensor([0.0, 0.25, 1.0]), 16)
    assert e.shape == (3, 16) and e.dtype == torch.float32
    assert torch.equal(e[0], torch.cat([torch.ones(8), torch.zeros(8)]))  # t = 0: cos = 1, sin = 0
    assert (e.abs() <= 1).all()


def test_time_embedding_shape():
    out = TimeEmbedding(32)(torch.rand(5))
    assert out.shape == (5, 32) and out.dtype == torch.float32


@pytest.mark.parametrize('cin,cout', [(16, 16), (16, 32), (32, 8)])
def test_residual_block_shapes_and_skip(cin, cout):
    block = ResidualBlock(cin, cout, time_emb_dim=24)
    x, t_emb = torch.randn(3, cin, 14, 14), torch.randn(3, 24)
    assert block(x, t_emb).shape == (3, cout, 14, 14)
    assert isinstance(block.skip, torch.nn.Identity) == (cin == cout)


def test_residual_block_uses_time():
    block = ResidualBlock(8, 8, time_emb_dim=16)
    torch.nn.init.normal_(block.conv2.weight, std=0.1)
    x = torch.randn(1, 8, 7, 7)
    assert not torch.allclose(block(x, torch.zeros(1, 16)), block(x, torch.ones(1, 16)))


def test_resolution_changes_and_attention():
    assert Downsample(4)(torch.randn(2, 4, 28, 28)).shape == (2, 4, 14, 14)
    assert Upsample(4)(torch.randn(2, 4, 7, 7)).shape == (2, 4, 14, 14)
    assert SelfAttention(16)(torch.randn(2, 16, 7, 7)).shape == (2, 16, 7, 7)


@pytest.mark.parametrize('batch', [1, 3, 5, 7])
def test_unet_odd_batch_sizes(batch):
    model = UNet(base_channels=8, time_emb_dim=16)
    out = model(torch.randn(batch, 1, 28, 28), torch.rand(batch))
    assert out.shape == (batch, 1, 28, 28) and out.dtype == torch.float32


def test_unet_time_as_float_or_tensor():
    model = UNet(base_channels=8, time_emb_dim=16)
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    x = torch.randn(4, 1, 28, 28)
    ref = model(x, torch.full((4,), 0.3))
    for t in (0.3, torch.tensor(0.3), torch.tensor([0.3] * 4)):
        torch.testing.assert_close(model(x, t), ref)


def test_unet_seed_defaults_and_size():
    model = UNet()
    assert (model.time_embedding.dim, model.conv_in.out_channels) == (128, 64)
    assert 1_000_000 < count_parameters(model) < 10_000_000
    without_attention = UNet(base_channels=8, time_emb_dim=16, attention=False, num_res_blocks=2, channel_mults=(1, 2))
    assert without_attention(torch.randn(2, 1, 28, 28), 0.5).shape == (2, 1, 28, 28)
