"The explorer's pieces: one setting's samples and trajectory, its figure, its controls, and the fallback without ipywidgets."
import sys

import matplotlib
matplotlib.use('Agg')
import pytest

from conftest import tiny_flow
from fm_mnist.explorer import ALL_DIGITS, explorer, generate, show_generation


def test_generate_returns_samples_trajectory_and_nfe():
    samples, traj, nfe = generate(tiny_flow(10), digit=None, solver='rk4', num_steps=2, num_samples=10)
    assert samples.shape == (10, 1, 28, 28) and traj.shape == (3, 10, 1, 28, 28) and nfe == 16   # 8 guided calls


def test_show_generation_draws_grid_and_strip():
    fig = show_generation(tiny_flow(10), digit=4, guidance_scale=3.0, solver='heun', num_steps=3, num_samples=10, strip_rows=2)
    assert len(fig.axes) == 2 and 'digit 4' in fig.axes[0].get_title() and '12 NFE' in fig.axes[0].get_title()


def test_unconditional_model_refuses_a_digit():
    with pytest.raises(ValueError, match='unconditional'): generate(tiny_flow(), digit=3, num_steps=1)


def test_explorer_falls_back_to_a_static_figure(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'ipywidgets', None)   # as if ipywidgets were not installed
    assert explorer(tiny_flow(10)) is None
    assert 'static figure' in capsys.readouterr().out


def test_explorer_controls_show_all_digits_and_redraw():
    pytest.importorskip('ipywidgets')
    ui = explorer(tiny_flow(10))
    (model, digit, guidance), (solver, steps, seed), (button, status) = (box.children for box in ui.children[:3])
    assert digit.value == ALL_DIGITS and digit.label == 'all digits'   # a real selection, shown by the dropdown
    assert status.value.startswith('drawn in')
    digit.value, solver.value, steps.value = 3, 'rk4', 1
    status.value = ''
    button.click()
    assert status.value.startswith('drawn in')


@pytest.mark.parametrize('grid_share, start', [(0.0, ('midpoint', 4)), (1.0, ('euler', 1))])
def test_explorer_starts_a_model_trained_for_few_steps_at_one_euler_step(grid_share, start):
    pytest.importorskip('ipywidgets')
    flow = tiny_flow(); flow.grid_share = grid_share           # as the few-step and one-step checkpoints say
    ui = explorer(flow)
    _, (solver, steps, _) = (box.children for box in ui.children[:2])
    assert (solver.value, steps.value) == start
