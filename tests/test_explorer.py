"The explorer's pieces: one setting's samples and trajectory, its figure, and the fallback without ipywidgets."
import sys

import matplotlib
matplotlib.use('Agg')
import pytest
import torch

from fm_mnist.explorer import explorer, generate, show_generation
from fm_mnist.flow_matching import FlowMatching
from fm_mnist.unet import UNet


@pytest.fixture
def flow():
    torch.manual_seed(0)
    return FlowMatching(UNet(base_channels=8, time_emb_dim=16, num_classes=10), device='cpu')


def test_generate_returns_samples_trajectory_and_nfe(flow):
    samples, traj, nfe = generate(flow, digit=None, solver='rk4', num_steps=2, num_samples=10)
    assert samples.shape == (10, 1, 28, 28) and traj.shape == (3, 10, 1, 28, 28) and nfe == 8


def test_show_generation_draws_grid_and_strip(flow):
    fig = show_generation(flow, digit=4, guidance_scale=3.0, solver='heun', num_steps=3, num_samples=10, strip_rows=2)
    assert len(fig.axes) == 2 and 'digit 4' in fig.axes[0].get_title() and '6 NFE' in fig.axes[0].get_title()


def test_unconditional_model_refuses_a_digit():
    with pytest.raises(ValueError, match='unconditional'):
        generate(FlowMatching(UNet(base_channels=8, time_emb_dim=16), device='cpu'), digit=3, num_steps=1)


def test_explorer_falls_back_to_a_static_figure(flow, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'ipywidgets', None)   # as if ipywidgets were not installed
    assert explorer(flow) is None
    assert 'static figure' in capsys.readouterr().out


def test_explorer_builds_its_controls(flow):
    pytest.importorskip('ipywidgets')
    ui = explorer(flow)
    assert sorted(ui.kwargs) == ['digit', 'guidance_scale', 'num_steps', 'seed', 'solver']
