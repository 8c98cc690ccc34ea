"The evaluator behaves as a measuring stick should, on real digits whose answers are known."
import json, subprocess, sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fm_mnist.evaluation import (Evaluator, classifier_path, file_sha256, frechet_distance, feature_stats,
                                 nearest_distance, CLASSIFIER_SHA256)
from conftest import quiet
from fm_mnist.checkpoint import load_flow, pretrained_path, read_checkpoint
from fm_mnist.config import EMA_HALFLIFE
from fm_mnist.cli import evaluate_main

ROOT = Path(__file__).resolve().parent.parent
N = 1000


@pytest.fixture
def ev(evaluator):
    return evaluator


def test_shipped_classifier_hash_is_recorded():
    assert CLASSIFIER_SHA256 and file_sha256(classifier_path()) == CLASSIFIER_SHA256


def test_frechet_distance_closed_form():
    mu1, mu2 = torch.zeros(3, dtype=torch.float64), torch.tensor([1., 2., 2.], dtype=torch.float64)
    s1 = torch.diag(torch.tensor([1., 4., 9.], dtype=torch.float64))
    s2 = torch.diag(torch.tensor([4., 4., 1.], dtype=torch.float64))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(9 + 1 + 0 + 4)


def test_fid_of_a_set_with_itself_is_zero(ev):
    feats = ev.test_feats[:N]
    assert abs(frechet_distance(*feature_stats(feats), *feature_stats(feats))) < 1e-3


def test_real_against_real_is_the_floor(ev):
    g = torch.Generator().manual_seed(0)
    real = ev.x_train[torch.randperm(len(ev.x_train), generator=g)[:N]]
    assert ev.fid(real) == pytest.approx(ev.floor(N)['fid_floor'])
    assert 0 < ev.floor(N)['fid_floor'] < 30  # positive: FID is biased upwards at finite N
    assert ev.floor(N, seed=1)['fid_floor'] != ev.floor(N)['fid_floor']   # another draw of real digits: another floor


def test_degraded_digits_score_much_worse(ev):
    real = ev.x_train[:N]
    floor = ev.floor(N)['fid_floor']
    torch.manual_seed(0)
    assert ev.fid((real + 0.3 * torch.randn_like(real)).clamp(-1, 1)) > 5 * floor
    assert ev.fid(F.avg_pool2d(real, 3, stride=1, padding=1)) > 2 * floor
    assert ev.fid(torch.rand_like(real) * 2 - 1) > 50 * floor


def test_single_class_shows_in_the_histogram(ev):
    threes = ev.x_test[ev.y_test == 3][:N]
    r = ev.evaluate(threes, floor=False)
    assert r['class_histogram'][3] > 0.95 and r['class_tv_from_uniform'] > 0.85
    mixed = ev.evaluate(ev.x_test[:N], floor=False)
    assert mixed['class_tv_from_uniform'] < 0.1 and mixed['confidence'] > 0.98  # the test set is nearly balanced


def test_memorisation_check(ev):
    copies = ev.x_train[:200]
    assert nearest_distance(copies, ev.x_train).max() < 0.1  # 0 up to float32 round-off; real digits are ~8 apart
    assert ev.evaluate(ev.x_test[:200], floor=False)['nn_distance'] > 3


def test_fm_evaluate_writes_json(tmp_path, mnist_root, evaluator, monkeypatch):
    import fm_mnist.evaluation
    monkeypatch.setattr(fm_mnist.evaluation, 'Evaluator', lambda *a, **k: evaluator)   # the session's evaluator
    out = tmp_path / 'eval.json'
    rc, stdout, err = quiet(evaluate_main, ['--pretrained', '--num_samples', '200', '--num_steps', '4', '--device', 'cpu',
                                            '--data_dir', str(mnist_root), '--json', str(out)])
    assert rc == 0, err
    res = json.loads(out.read_text())
    for key in ('fid', 'fid_floor', 'confidence', 'class_histogram', 'class_tv_from_uniform', 'nn_distance', 'num_samples'):
        assert key in res
    assert res['num_samples'] == 200 and res['nfe'] == 4 and 'FID floor' in stdout


def bench(*args, timeout=600):
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.mark.slow
def test_quality_and_speed_benchmarks_smoke(tmp_path, mnist_root):
    bench('benchmarks/quality_vs_nfe.py', '--pretrained', '--num_samples', '100', '--nfe', '1,2', '--solvers', 'euler,midpoint',
          '--tolerances', '1e-1', '--device', 'cpu', '--data_dir', str(mnist_root), '--out', str(tmp_path))
    assert json.loads((tmp_path / 'quality_vs_nfe.json').read_text())['rows'][0]['nfe'] == 1
    md = (tmp_path / 'quality_vs_nfe.md').read_text()
    assert (tmp_path / 'quality_vs_nfe.png').is_file() and '| euler |' in md and '| midpoint |' in md and 'dopri5' in md
    bench('benchmarks/quality_vs_nfe.py', '--pretrained', 'conditional', '--num_samples', '20', '--nfe', '4', '--solvers', 'euler',
          '--tolerances', '', '--name', 'guided', '--device', 'cpu', '--data_dir', str(mnist_root), '--out', str(tmp_path))
    assert json.loads((tmp_path / 'guided.json').read_text())['rows'][0]['nfe'] == 4         # 2 guided steps, 2 passes each
    assert 'guidance 1.5, both branches counted' in (tmp_path / 'guided.md').read_text()
    bench('benchmarks/speed.py', '--base_channels', '8', '--batch_size', '8', '--steps', '2', '--warmup', '1', '--sample_batch', '4',
          '--device', 'cpu', '--data_dir', str(mnist_root), '--json', str(tmp_path / 'speed.json'))
    speed = json.loads((tmp_path / 'speed.json').read_text())
    assert speed['train_images_per_s'] > 0 and speed['gflops_per_image_forward'] > 0


@pytest.mark.slow
def test_recipe_benchmark_smoke(tmp_path, mnist_root):
    bench('benchmarks/recipe.py', '--budget', 'images=256', '--variants', 'default,conditional_ot', '--num_samples', '50',
          '--data_dir', str(mnist_root), '--out', str(tmp_path), '--cache', str(tmp_path / 'cache'))
    res = json.loads((tmp_path / 'recipe_images256.json').read_text())
    assert set(res['variants']) == {'default', 'conditional_ot'} and res['variants']['default']['steps'] == 2
    assert res['variants']['conditional_ot']['midpoint_8']['nfe'] == 16     # guided: 8 calls, 2 forward passes each
    bench('benchmarks/recipe.py', '--budget', 'images=256', '--variants', 'default', '--num_samples', '50', '--train_seed', '1',
          '--data_dir', str(mnist_root), '--out', str(tmp_path), '--cache', str(tmp_path / 'cache'))
    again = json.loads((tmp_path / 'recipe_images256_train_seed1.json').read_text())   # another run, its own file
    assert again['meta']['train_seed'] == 1 and again['meta']['seed'] == 0 and 'trained from seed 1' in (tmp_path / 'recipe_images256_train_seed1.md').read_text()


@pytest.mark.slow
def test_ema_benchmark_smoke(tmp_path, mnist_root):
    bench('benchmarks/ema.py', '--images', '256', '--fractions', f'0.2,{EMA_HALFLIFE!r}', '--num_samples', '50',
          '--data_dir', str(mnist_root), '--out', str(tmp_path))
    res = json.loads((tmp_path / 'ema.json').read_text())
    assert res['meta']['steps'] == 8 and len(res['rows']) == 4 and 'half-life 0.2 of the steps so far' in res['rows']
    default, same = (r for k, r in res['rows'].items() if k.startswith('the library default') or k.startswith('half-life 0.077'))
    assert default == same                        # an extra average at the default's half-life saw every step, as the EMA did
    p = subprocess.run([sys.executable, 'benchmarks/ema.py', '--fractions', '0,1'], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and '--fractions' in p.stderr


@pytest.mark.slow
def test_few_step_benchmark_smoke(tmp_path, mnist_root, trained):
    teacher = str(trained / 'checkpoint_final.pt')
    common = ['--teacher', teacher, '--methods', 'reflow', '--minutes', '0.02', '--reflow_pairs', '64', '--batch_size', '16',
              '--num_samples', '40', '--device', 'cpu', '--data_dir', str(mnist_root), '--out', str(tmp_path), '--work', str(tmp_path / 'work')]
    bench('benchmarks/few_step.py', *common, '--save_reflow', str(tmp_path / 'stage1.pt'))
    first = json.loads((tmp_path / 'few_step.json').read_text())
    assert [r['nfe'] for r in first['rows'] if r['model'] == 'reflow'] == [1, 2, 4]
    assert read_checkpoint(teacher)['_train_config'].optimizer == 'muon'              # the cpu recipe's teacher...
    assert read_checkpoint(tmp_path / 'stage1.pt')['_train_config'].optimizer == 'adamw'  # ...is fine-tuned with AdamW
    # a second stage from the first, with times on the Euler grid, keeps the teacher's rows instead of scoring them again
    bench('benchmarks/few_step.py', *common, '--reflow_from', str(tmp_path / 'stage1.pt'), '--grid_share', '0.75', '--pair_seed', '2', '--keep',
          '--loss', 'pseudo_huber')
    second = json.loads((tmp_path / 'few_step.json').read_text())
    assert [r for r in second['rows'] if r['model'] == 'teacher'] == [r for r in first['rows'] if r['model'] == 'teacher']
    assert second['meta']['grid_share'] == 0.75 and 'on the Euler grid' in second['costs']['reflow']
    assert second['meta']['loss'] == 'pseudo_huber' and 'the pseudo-Huber loss' in second['costs']['reflow']
    assert 'a further 0.02 minutes' in (tmp_path / 'few_step.md').read_text()
    p = subprocess.run([sys.executable, 'benchmarks/few_step.py', *common, '--grid_share', '1.5'], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and '--grid_share must be in [0, 1]' in p.stderr
    p = subprocess.run([sys.executable, 'benchmarks/few_step.py', *common, '--grid_times', '0,2'], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and 'times must be in [0, 1]' in p.stderr
    p = subprocess.run([sys.executable, 'benchmarks/few_step.py', *common, '--methods', 'meanflow', '--loss', 'pseudo_huber'], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 2 and '--loss is a setting of --methods reflow' in p.stderr
    # a stage whose targets away from t = 0 are the teacher's velocity
    bench('benchmarks/few_step.py', *common, '--reflow_from', str(tmp_path / 'stage1.pt'), '--teacher_targets', '--grid_share', '1',
          '--grid_times', '0,0,0,0.25,0.5,0.75', '--keep', '--adversarial', '1')
    costs = json.loads((tmp_path / 'few_step.json').read_text())['costs']['reflow']
    assert "the teacher's velocity as the target" in costs and 'a discriminator weighted 1' in costs
    p = subprocess.run([sys.executable, 'benchmarks/few_step.py', *common, '--adversarial', '-1'], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and '--adversarial must be at least 0' in p.stderr
    p = subprocess.run([sys.executable, 'benchmarks/few_step.py', *common, '--teacher_targets'], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and 'jump at t = 0 only' in p.stderr   # without grid times at 0 nothing would learn the jump
    # a stage whose later steps start from the model's own jump
    bench('benchmarks/few_step.py', *common, '--reflow_from', str(tmp_path / 'stage1.pt'), '--own_jump', '--grid_share', '1',
          '--grid_times', '0,0.5', '--keep')
    assert "from the model's own jump" in json.loads((tmp_path / 'few_step.json').read_text())['costs']['reflow']
    p = subprocess.run([sys.executable, 'benchmarks/few_step.py', *common, '--own_jump', '--grid_share', '1', '--grid_times', '0,1'],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and '--grid_times below 1' in p.stderr   # the target divides by 1 - t
    # the teacher's flow map, distilled from its trajectories into a network with an interval input
    bench('benchmarks/few_step.py', *common, '--methods', 'flowmap', '--keep', '--save_flowmap', str(tmp_path / 'flowmap.pt'))
    third = json.loads((tmp_path / 'few_step.json').read_text())
    assert [r['nfe'] for r in third['rows'] if r['model'] == 'flowmap'] == [1, 2, 4] and any(r['model'] == 'reflow' for r in third['rows'])
    flow = load_flow(str(tmp_path / 'flowmap.pt'), device='cpu')
    assert type(flow).__name__ == 'MeanFlow' and flow.sample(num_samples=2, num_steps=2, seed=0, return_nfe=True)[1] == 2


@pytest.mark.slow
def test_jump_refine_benchmark_smoke(tmp_path, mnist_root):
    bench('benchmarks/jump_refine.py', '--taus', '0.5', '--teacher_steps', '1,2', '--num_samples', '40', '--device', 'cpu',
          '--data_dir', str(mnist_root), '--out', str(tmp_path))
    res = json.loads((tmp_path / 'jump_refine.json').read_text())
    assert [(r['tau'], r['nfe']) for r in res['rows']] == [(0.5, 2), (0.5, 3)]
    p = subprocess.run([sys.executable, 'benchmarks/jump_refine.py', '--taus', '1.5'], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and '--taus must be in (0, 1)' in p.stderr


def test_teacher_targets_are_the_pair_at_t_0_and_the_teacher_elsewhere():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from few_step import TeacherTargets
    from fm_mnist.flow_matching import FlowMatching
    from fm_mnist.unet import UNet
    torch.manual_seed(0)
    student, teacher = (FlowMatching(UNet(base_channels=8, time_emb_dim=16), device='cpu') for _ in range(2))
    with torch.no_grad():
        for net in (student.model, teacher.model):
            for w in net.parameters(): w.normal_(std=0.05)    # no zero-initialised outputs: the two nets differ
    flow = TeacherTargets(student, teacher)
    x1, x0 = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    for tt in (torch.zeros(4), torch.full((4,), 0.5), torch.tensor([0.0, 0.5, 0.0, 0.25])):   # a batch may mix both kinds
        xt = flow.interpolate(x0, x1, tt)
        with torch.no_grad():
            target = torch.where((tt == 0).view(-1, 1, 1, 1), x1 - x0, teacher.model(xt, tt))
            assert torch.allclose(flow.loss(x1, x0=x0, t=tt), F.mse_loss(student.model(xt, tt), target), atol=1e-6)


def _drawn_flow(num_classes=None, **kw):
    "A tiny flow whose weights are all drawn (none zero-initialised, so its velocity is not zero), and a batch of pairs."
    from fm_mnist.flow_matching import FlowMatching
    from fm_mnist.unet import UNet
    flow = FlowMatching(UNet(base_channels=8, time_emb_dim=16, num_classes=num_classes), device='cpu', **kw)
    with torch.no_grad():
        for w in flow.model.parameters(): w.normal_(std=0.05)
    return flow, (torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.tensor([0.0, 0.25, 0.5, 0.9]))


def test_pair_targets_are_plain_reflow_under_either_distance():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from few_step import PairTargets, pseudo_huber, PSEUDO_HUBER_C
    torch.manual_seed(0)
    plain, (x1, x0, tt) = _drawn_flow()
    flow = PairTargets(plain)
    with torch.no_grad():
        assert torch.allclose(flow.loss(x1, x0=x0, t=tt), plain.loss(x1, x0=x0, t=tt), atol=1e-6)   # the squared error: reflow
        flow.distance = pseudo_huber
        err = (plain.model(plain.interpolate(x0, x1, tt), tt) - (x1 - x0)).flatten(1)
        c = PSEUDO_HUBER_C
        assert torch.allclose(flow.loss(x1, x0=x0, t=tt), ((err.pow(2).sum(1) + c * c).sqrt() - c).mean(), atol=1e-5)
    assert pseudo_huber(torch.zeros(2, 3), torch.zeros(2, 3)) == 0                                    # zero at zero error
    cond, _ = _drawn_flow(num_classes=10, label_dropout=0.5)
    with torch.no_grad():
        y = torch.tensor([3, 1, 4, 1])
        losses = []
        for f in (PairTargets(cond), cond):                  # the same labels hidden: the same generator state for both
            torch.manual_seed(1); losses.append(f.loss(x1, x0=x0, t=tt, y=y))
        assert torch.allclose(*losses, atol=1e-6)            # conditional reflow, labels dropped as in training


def test_critic_trains_beside_the_network_and_pulls_its_samples():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from few_step import Critic, PairTargets
    torch.manual_seed(0)
    plain, (x1, x0, tt) = _drawn_flow()
    flow = PairTargets(plain)
    regression = flow.loss(x1, x0=x0, t=tt)
    real = torch.rand(16, 1, 28, 28) * 2 - 1
    state = torch.get_rng_state()
    flow.critic = Critic(real, weight=1.0, device='cpu', seed=0)
    assert torch.equal(torch.get_rng_state(), state)                    # its initial weights leave the training's stream alone
    before = [w.detach().clone() for w in flow.critic.parameters()]
    loss = flow.loss(x1, x0=x0, t=tt)
    assert any(not torch.equal(a, b) for a, b in zip(before, flow.critic.parameters()))   # one discriminator step per call
    assert torch.isfinite(loss) and not torch.allclose(loss, regression)  # the regression plus the adversarial term
    flow.model.zero_grad(); loss.backward()
    assert flow.model.conv_out.weight.grad.abs().sum() > 0


def test_flow_map_targets_are_chords_of_the_teacher_trajectory():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from few_step import FlowMapTargets
    from fm_mnist.meanflow import MeanFlow
    from fm_mnist.unet import UNet
    torch.manual_seed(0)
    student = MeanFlow(UNet(base_channels=8, time_emb_dim=16, interval=True), device='cpu')
    with torch.no_grad():
        for w in student.model.parameters(): w.normal_(std=0.05)
    traj, grid = torch.randn(6, 5, 28, 28), torch.linspace(0, 1, 5)
    x0, zero, one = traj[:, :1], torch.zeros(6), torch.ones(6)
    with torch.no_grad():   # one jump: from the noise to the trajectory's end, in one interval of length 1
        want = F.mse_loss(student.model(x0, zero, None, one), traj[:, 4:] - x0)
        assert torch.allclose(FlowMapTargets(student, grid, jumps=(1,)).loss(traj), want)
        two = FlowMapTargets(student, grid, jumps=(2,))   # two jumps: 0 -> 1/2 and 1/2 -> 1, with the chords' slopes
        assert two.starts.tolist() == [0, 2] and two.ends.tolist() == [2, 4] and torch.allclose(two.weights, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match='3 equal jumps'): FlowMapTargets(student, grid, jumps=(3,))


@pytest.mark.slow
@pytest.mark.skipif(not pretrained_path('conditional').is_file(), reason='the shipped conditional model is not in this tree')
def test_guidance_benchmark_smoke(tmp_path, mnist_root):
    bench('benchmarks/guidance.py', '--pretrained', 'conditional', '--num_samples', '50', '--scales', '0,2', '--num_steps', '2',
          '--device', 'cpu', '--data_dir', str(mnist_root), '--out', str(tmp_path))
    rows = json.loads((tmp_path / 'guidance.json').read_text())['rows']
    assert [r['guidance_scale'] for r in rows] == [0.0, 2.0] and all(0 <= r['label_agreement'] <= 1 for r in rows)
    assert rows[1]['label_agreement'] > rows[0]['label_agreement']   # guidance makes the requested digit more likely


@pytest.mark.bench
def test_side_by_side_smoke(tmp_path, mnist_root):
    bench('benchmarks/side_by_side.py', '--images', '256', '--num_samples', '20', '--euler_steps', '2', '--attribution_steps', '1',
          '--device', 'cpu', '--data_dir', str(mnist_root), '--out', str(tmp_path), '--cache', str(tmp_path / 'cache'), timeout=900)
    res = json.loads((tmp_path / 'side_by_side.json').read_text())
    assert set(res['results']) == {'fm_mnist', 'torchcfm_reference'}
    for side in res['results'].values():
        assert side['parameters'] > 0 and side['dopri5']['nfe'] >= 2 and side['euler_2']['nfe'] == 2
    assert res['meta']['images_seen'] == 256 and res['ratios']['train_speed'] > 0
    assert res['ratios']['architecture'] * res['ratios']['engineering'] == pytest.approx(res['ratios']['train_speed'])
