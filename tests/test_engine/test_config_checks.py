"""Bad config input gets an error naming the entry and the fix: --cfg-options items that
are not KEY=VALUE (argparse error, exit 2), and model config keys no class takes
(config path, class, closest names). Every config under configs/ passes the key check."""
import argparse
import glob
import os.path as osp

import pytest
from _helpers import ROOT
from mmengine.config import Config, DictAction

from mmbeit.engine.config_checks import UnknownConfigKeyError, check_model_config
from mmbeit.engine.runtime import add_config_args
from mmbeit.registry import MODELS

CONFIGS = sorted(osp.relpath(p, ROOT)
                 for p in glob.glob(f'{ROOT}/configs/**/*.py', recursive=True)
                 if '/_base_/' not in p)


def _parser():
    parser = argparse.ArgumentParser(prog='train.py')
    add_config_args(parser, example='train_cfg.max_iters=10')
    return parser


# ------------------------------------------------------------------ --cfg-options
def test_good_cfg_options_parse_as_mmengine_parses_them():
    items = ['model.backbone.drop_path_rate=0.2', 'a.b=[1,2]', 'c=(1,[2,3])', 'd=None',
             'e=true', 'f=x=y', 'g=', 'h.0.k=s']
    plain = argparse.ArgumentParser()
    plain.add_argument('--cfg-options', nargs='+', action=DictAction)
    want = plain.parse_args(['--cfg-options', *items]).cfg_options
    got = _parser().parse_args(['--cfg-options', *items]).cfg_options
    assert got == want
    assert got['model.backbone.drop_path_rate'] == 0.2 and got['f'] == 'x=y'


@pytest.mark.parametrize('items, problem', [
    (['model.backbone.arch'], "'model.backbone.arch' has no \"=\": write "
                              'model.backbone.arch=VALUE'),
    (['a=1', 'model.backbone.arch'], "'model.backbone.arch' has no \"=\": write "
                                      'model.backbone.arch=VALUE'),
    (['=3'], "'=3' has an empty key or key part ('')"),
    (['model..arch=base'], "'model..arch=base' has an empty key or key part ('model..arch')"),
    (['a=[1,2'], "'a=[1,2' has unbalanced '[' / ']' brackets in its value"),
    (['a=(1,2'], "'a=(1,2' has unbalanced '(' / ')' brackets in its value"),
    (['a=[1,', '2]'], "'a=[1,' has unbalanced '[' / ']' brackets in its value"),
])
def test_bad_cfg_options_item_is_an_argparse_error(items, problem, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(['--cfg-options', *items])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('usage: train.py')
    assert f'train.py: error: --cfg-options: {problem}. Each item is KEY=VALUE, e.g. ' \
           'model.backbone.drop_path_rate=0.2' in err


@pytest.mark.parametrize('tool, argv', [
    ('tools/train.py', ['c.py']),
    ('tools/test.py', ['c.py', 'k.pth']),
    ('tools/infer.py', ['c.py', 'k.pth', 'i.jpg']),
    ('tools/misc/fit_hog_tokenizer.py', ['c.py', '--out', 'o.pth']),
    ('tools/analysis_tools/tokenize_images.py', ['c.py', 'imgs', '--out-dir', 'o']),
])
def test_every_tool_checks_its_cfg_options(tool, argv, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location(osp.basename(tool)[:-3], osp.join(ROOT, tool))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.parse_args(argv + ['--cfg-options', 'a.b=1']).cfg_options == {'a.b': 1}
    with pytest.raises(SystemExit) as exc:
        module.parse_args(argv + ['--cfg-options', 'model.backbone.arch'])
    assert exc.value.code == 2
    assert (": error: --cfg-options: 'model.backbone.arch' has no "
            '"=": write model.backbone.arch=VALUE.') in capsys.readouterr().err


# ------------------------------------------------------------------ model keys
@pytest.mark.parametrize('path', CONFIGS)
def test_every_config_passes_the_model_key_check(path):
    cfg = Config.fromfile(osp.join(ROOT, path))
    checked = check_model_config(cfg.model, MODELS, cfg.get('default_scope'))
    paths = [p for p, _ in checked]
    # the model itself always resolves (our classes and mmpretrain's / mmseg's models
    # take no **kwargs), and so does every backbone (BEiTViT, also inside mmseg/mmpretrain)
    assert paths[0] == 'model'
    if 'backbone' in cfg.model:
        assert ('model.backbone', 'BEiTViT') in checked


def _config(name):
    return Config.fromfile(osp.join(ROOT, 'configs', name))


def _error(cfg):
    with pytest.raises(UnknownConfigKeyError) as exc:
        check_model_config(cfg.model, MODELS, cfg.get('default_scope'))
    return str(exc.value)


def test_misspelt_backbone_key_names_path_class_and_suggestion():
    cfg = _config('beitv2/beitv2_vit-base_300e.py')
    cfg.model.backbone.archh = cfg.model.backbone.pop('arch')
    msg = _error(cfg)
    assert msg.splitlines()[1] == (
        "  model.backbone.archh: BEiTViT (mmbeit.models.backbones.beit_vit) has no "
        "argument 'archh'; did you mean 'arch'?")
    assert isinstance(UnknownConfigKeyError(), TypeError)


def test_misspelt_detector_key_is_named_at_the_top_level():
    """mmbeit.MaskRCNN is registered as a builder that spells out the class's
    arguments, so a misspelt key of the detector itself is caught too."""
    cfg = _config('demo/beit_vit-tiny-p8_mask-rcnn-scratch_demo-coco-128.py')
    cfg.model.rpn_haed = cfg.model.pop('rpn_head')
    assert _error(cfg).splitlines()[1] == (
        "  model.rpn_haed: build_mask_rcnn (mmbeit.models.detectors) has no argument "
        "'rpn_haed'; did you mean 'rpn_head'?")


def test_misspelt_keys_inside_mmseg_scope_and_prefixed_types():
    cfg = _config('demo/beitv2_vit-tiny-p8_upernet-1k_demo-ade-128.py')
    assert cfg.model._scope_ == 'mmseg' and cfg.model.backbone.type == 'mmbeit.BEiTViT'
    cfg.model.backbone.drop_path_rat = cfg.model.backbone.pop('drop_path_rate')
    cfg.model.neck.embed_dims = cfg.model.neck.pop('embed_dim')
    cfg.model.decode_head.loss_decode.loss_wieght = 1.0
    lines = _error(cfg).splitlines()[1:]
    assert len(lines) == 3
    assert lines[0].startswith('  model.backbone.drop_path_rat: BEiTViT (mmbeit.')
    assert lines[0].endswith("did you mean 'drop_path_rate'?")
    assert lines[1].startswith('  model.neck.embed_dims: Feature2Pyramid (mmseg.')
    assert lines[1].endswith("did you mean 'embed_dim'?")
    assert lines[2].startswith('  model.decode_head.loss_decode.loss_wieght: '
                               'CrossEntropyLoss (mmseg.')
    assert lines[2].endswith("did you mean 'loss_weight' or 'class_weight'?")


def test_misspelt_key_of_a_nested_teacher_and_an_mmpretrain_preprocessor():
    cfg = _config('vqkd/vqkd_vit-base_clip-teacher_100e_in1k.py')
    cfg.model.teacher.img_sizee = 224
    assert "model.teacher.img_sizee: CLIPViT (mmbeit." in _error(cfg)
    cfg = _config('beit/benchmarks/beit_vit-base_ft-100e_in1k.py')
    cfg.model.data_preprocessor.to_rbg = True
    msg = _error(cfg)
    assert 'model.data_preprocessor.to_rbg: ClsDataPreprocessor (mmpretrain.' in msg
    assert "did you mean 'to_rgb'?" in msg


def test_key_with_no_close_name_lists_every_argument():
    cfg = _config('beitv2/beitv2_vit-base_300e.py')
    cfg.model.head.zzz = 1
    assert _error(cfg).splitlines()[1] == (
        "  model.head.zzz: MIMHead (mmbeit.models.heads.mim_head) has no argument 'zzz'; "
        'it takes in_channels, vocab_size, loss_weight, init_cfg')


def test_init_cfg_and_layer_configs_are_not_taken_for_models():
    # norm_cfg's requires_grad is mmcv's build_norm_layer's key, not SyncBatchNorm's;
    # init_cfg's keys are the initialiser's
    model = dict(type='BEiTV2Neck', init_cfg=dict(type='Pretrained', checkpoint='x.pth',
                                                   prefix='neck.'),
                 norm_cfg=dict(type='SyncBN', requires_grad=True))
    msg = _error(Config(dict(model=model)))
    assert msg.count('\n  ') == 1 and "model.norm_cfg: BEiTV2Neck" in msg
    model.pop('norm_cfg')
    assert check_model_config(model) == [('model', 'BEiTV2Neck')]


def test_unknown_types_are_left_to_the_build():
    model = dict(type='NoSuchModel', anything=1, head=dict(type='MIMHead', in_channels=8))
    assert check_model_config(model) == [('model.head', 'MIMHead')]


def test_prefixed_type_resolves_in_its_scope_its_children_in_the_current_one():
    # as mmengine builds: inside scope 'mmseg', 'mmbeit.BEiT' is mmbeit's class, but the
    # BEiT code's MODELS.build(head) looks 'MIMHead' up in mmseg's registry (and fails
    # there), so that unprefixed head is not taken for mmbeit's MIMHead
    model = dict(type='mmbeit.BEiT', backbone=dict(type='mmbeit.BEiTViT'), oops=1,
                 head=dict(type='MIMHead', in_channels=8, not_checked=1),
                 target_generator=dict(type='mmbeit.HOGTokenizer'))
    msg = _error(Config(dict(model=model, default_scope='mmseg')))
    assert msg.splitlines()[1:] == [
        "  model.oops: BEiT (mmbeit.models.algorithms.beit) has no argument 'oops'; it "
        'takes backbone, head, target_generator, neck, loss_weights, data_preprocessor, '
        'init_cfg']
    model.pop('oops')
    assert check_model_config(model, MODELS, 'mmseg') == [
        ('model', 'BEiT'), ('model.backbone', 'BEiTViT'),
        ('model.target_generator', 'HOGTokenizer')]


# ------------------------------------------------------------------ numeric arguments
def _neck(**kw):
    from mmbeit.models.necks import BEiTV2Neck
    cfg = dict(early_layers=1, num_layers=1, embed_dims=8, num_heads=2,
               feedforward_channels=16, backbone_layers=2)
    cfg.update(kw)
    return BEiTV2Neck(**cfg)


def _head(**kw):
    from mmbeit.models.heads import MIMHead
    return MIMHead(**dict(dict(in_channels=8, vocab_size=16), **kw))


def _layer_decay(**paramwise):
    from mmbeit.engine.optimizers import LayerDecayOptimWrapperConstructor
    return LayerDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1e-3)), paramwise_cfg=paramwise)


def _fp16_wrapper(loss_scale):
    import torch

    from mmbeit.engine.optimizers import MixedPrecisionOptimWrapper
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return MixedPrecisionOptimWrapper(opt, dtype='float16', device_type='cuda',
                                      loss_scale=loss_scale)


def _views(color_jitter):
    from mmbeit.datasets.transforms import BEiTMaskedViews
    return BEiTMaskedViews(color_jitter=color_jitter)


@pytest.mark.parametrize('build, kwargs, message', [
    (_neck, dict(drop_path_rate=-0.1),
     'BEiTV2Neck: drop_path_rate must be a finite number in [0, 1), got -0.1'),
    (_neck, dict(drop_path_rate=1.0),
     'BEiTV2Neck: drop_path_rate must be a finite number in [0, 1), got 1.0'),
    (_neck, dict(layer_scale_init_value=-0.1),
     'BEiTV2Neck: layer_scale_init_value must be a finite number >= 0, got -0.1'),
    (_neck, dict(num_layers=0), 'BEiTV2Neck: num_layers must be an int >= 1, got 0'),
    (_neck, dict(num_heads=2.0), 'BEiTV2Neck: num_heads must be an int >= 1, got 2.0'),
    (_neck, dict(norm_eps=0.0), 'BEiTV2Neck: norm_eps must be a finite number > 0, got 0.0'),
    (_neck, dict(early_layers=3),
     'BEiTV2Neck: early_layers must be in [1, backbone_layers=2], got 3'),
    (_head, dict(loss_weight=-1.0),
     'MIMHead: loss_weight must be a finite number >= 0, got -1.0'),
    (_head, dict(loss_weight=float('nan')),
     'MIMHead: loss_weight must be a finite number >= 0, got nan'),
    (_head, dict(vocab_size=0), 'MIMHead: vocab_size must be an int >= 1, got 0'),
    (_layer_decay, dict(layer_decay_rate='0.65'),
     "LayerDecayOptimWrapperConstructor paramwise_cfg: layer_decay_rate must be a finite "
     "number in (0, 1], got '0.65'"),
    (_layer_decay, dict(layer_decay_rate=0.0),
     'LayerDecayOptimWrapperConstructor paramwise_cfg: layer_decay_rate must be a finite '
     'number in (0, 1], got 0.0'),
    (_layer_decay, dict(no_decay_names=[1]),
     'LayerDecayOptimWrapperConstructor paramwise_cfg: no_decay_names must be a list of '
     "parameter name endings (e.g. ['mask_token']), got [1]"),
    (_fp16_wrapper, dict(loss_scale=0.0),
     'MixedPrecisionOptimWrapper: a static loss_scale must be a finite number > 0 (e.g. '
     "512.0), got 0.0; or use 'dynamic'"),
    (_fp16_wrapper, dict(loss_scale=float('inf')),
     'MixedPrecisionOptimWrapper: a static loss_scale must be a finite number > 0 (e.g. '
     "512.0), got inf; or use 'dynamic'"),
    (_views, dict(color_jitter=(0.4, 0.4, 0.4, 0.6)),
     'BEiTMaskedViews: the hue of color_jitter shifts hues by up to that fraction of the '
     'colour wheel and must be <= 0.5, got 0.6'),
    (_views, dict(color_jitter=(float('inf'), 0.4, 0.4)),
     'BEiTMaskedViews: color_jitter must be None or (brightness, contrast, saturation[, hue]) '
     'with values >= 0, got (inf, 0.4, 0.4)'),
])
def test_bad_numeric_argument_is_refused_when_built(build, kwargs, message):
    with pytest.raises(ValueError) as exc:
        build(**kwargs)
    assert str(exc.value) == message


@pytest.mark.parametrize('build, kwargs', [
    (_neck, dict(drop_path_rate=0.0, layer_scale_init_value=0.0)),
    (_neck, dict(drop_path_rate=0.99, early_layers=2)),
    (_head, dict(loss_weight=0.0)),
    (_layer_decay, dict(layer_decay_rate=1, no_decay_names='mask_token')),
    (_fp16_wrapper, dict(loss_scale=512)),
    (_views, dict(color_jitter=(0.4, 0.4, 0.4, 0.5))),
])
@pytest.mark.filterwarnings('ignore:torch.cuda.amp.GradScaler is enabled')
def test_numeric_arguments_at_the_bounds_are_accepted(build, kwargs):
    build(**kwargs)
