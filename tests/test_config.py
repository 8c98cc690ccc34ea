"Every default in one place: the configs validate their values, the recipes keep their meaning, the scripts read their defaults."
from dataclasses import asdict

import pytest

from fm_mnist.cli import evaluate_parser, generate_parser, train_parser
from fm_mnist.config import (AUTO_MINUTES, PRESETS, ModelConfig, PathConfig, SampleConfig, TrainConfig, config_from_dict,
                             resolve_preset)
from fm_mnist.flow_matching import COUPLINGS, TIME_SAMPLINGS, FlowMatching
from fm_mnist.sampler import SOLVERS


def test_gpu_recipe_is_the_original_design():
    mc, tc = PRESETS['gpu']
    assert (mc.base_channels, mc.time_emb_dim, mc.in_channels) == (64, 128, 1)
    assert (tc.epochs, tc.batch_size, tc.lr, tc.minutes, tc.optimizer) == (50, 128, 1e-3, None, 'adamw')


def test_cpu_recipe_is_the_small_batch_one_and_quick_has_a_budget():
    mc, tc = PRESETS['cpu']
    assert mc.base_channels == 32 and (tc.epochs, tc.batch_size, tc.lr, tc.minutes, tc.optimizer) == (6, 32, 1e-3, None, 'muon')
    assert PRESETS['quick'][1].minutes == 10 and PRESETS['quick'][0] == mc and PRESETS['quick'][1].optimizer == 'muon'


@pytest.mark.parametrize('device,recipe,minutes', [('cuda', 'gpu', None), ('cpu', 'cpu', AUTO_MINUTES), ('mps', 'cpu', AUTO_MINUTES)])
def test_auto_picks_by_device(device, recipe, minutes):
    name, mc, tc, why = resolve_preset('auto', device)
    assert name == recipe and tc.minutes == minutes and why.startswith('auto')
    assert mc == PRESETS[recipe][0]


@pytest.mark.parametrize('cls,kw,field', [
    (ModelConfig, {'base_channels': 0}, 'base_channels'), (ModelConfig, {'base_channels': 5000}, 'base_channels'),
    (ModelConfig, {'time_emb_dim': 7}, 'time_emb_dim'), (ModelConfig, {'channel_mults': (1, -2)}, 'channel_mults'),
    (ModelConfig, {'channel_mults': (1,) * 9}, 'channel_mults'), (ModelConfig, {'num_classes': 0}, 'num_classes'),
    (ModelConfig, {'image_size': 30}, 'image_size'), (ModelConfig, {'dropout': 2.0}, 'dropout'),
    (TrainConfig, {'lr': 0.0}, 'lr'), (TrainConfig, {'lr': float('inf')}, 'lr'), (TrainConfig, {'epochs': 0}, 'epochs'),
    (TrainConfig, {'batch_size': 2**40}, 'batch_size'), (TrainConfig, {'coupling': 'nearest'}, 'coupling'),
    (TrainConfig, {'ema_decay': 1.0}, 'ema_decay'), (TrainConfig, {'minutes': -1.0}, 'minutes'),
    (TrainConfig, {'objective': 'gan'}, 'objective'), (TrainConfig, {'optimizer': 'sgd'}, 'optimizer'),
    (TrainConfig, {'muon_lr': 0.0}, 'muon_lr'), (SampleConfig, {'num_steps': 0}, 'num_steps'),
    (SampleConfig, {'guidance_scale': -1.0}, 'guidance_scale')])
def test_configs_reject_impossible_values_naming_the_field(cls, kw, field):
    with pytest.raises(ValueError, match=f'{cls.__name__}.{field}'):
        cls(**kw)


def test_config_from_dict_round_trip_and_unknown_fields():
    for name, (mc, tc) in PRESETS.items():
        assert config_from_dict(ModelConfig, asdict(mc)) == mc and config_from_dict(TrainConfig, asdict(tc)) == tc
    with pytest.raises(ValueError, match='unknown'): config_from_dict(TrainConfig, {'colour': 'red'})
    with pytest.raises(ValueError, match='must be a dict'): config_from_dict(ModelConfig, [1, 2])


def test_scripts_take_their_defaults_and_choices_from_the_configs():
    sc, pc, tc = SampleConfig(), PathConfig(), TrainConfig()
    for parser in (generate_parser(), evaluate_parser(), train_parser()):
        actions = {a.dest: a for a in parser._actions}
        steps = actions['num_steps']             # training's None stands for "not given"; its help names the default
        assert steps.default == sc.num_steps or (steps.default is None and f'default: {sc.num_steps}' in steps.help)
        assert actions['rtol'].default == sc.rtol and actions['atol'].default == sc.atol
        assert set(SOLVERS) <= set(actions['solver'].choices)
        assert str(sc.guidance_scale) in actions['guidance_scale'].help
    t = {a.dest: a for a in train_parser()._actions}
    assert tuple(t['time_sampling'].choices) == TIME_SAMPLINGS and tuple(t['coupling'].choices) == COUPLINGS
    assert t['sample_every'].default == pc.sample_every and t['checkpoint_every'].default == pc.checkpoint_every
    assert set(t['preset'].choices) == {'auto', *PRESETS}
    assert generate_parser().parse_args([]).num_samples == sc.num_samples


def test_the_loss_and_the_training_config_share_their_defaults():
    import inspect
    params = inspect.signature(FlowMatching).parameters
    tc = TrainConfig()
    assert params['time_sampling'].default == tc.time_sampling == TIME_SAMPLINGS[0]
    assert params['coupling'].default == tc.coupling and params['label_dropout'].default == tc.label_dropout
