"""mmbeit's registries mirror mmengine's and mix with mmpretrain's and mmseg's: every
``type`` a config names resolves, in the scope it is built in, to the class meant (ours for
our names, the foreign package's for a scoped name, mmengine's / torch's by fallback), and
a fresh process finds our classes through the registries' ``locations`` alone."""
import glob
import importlib
import json
import textwrap

import mmengine.registry as mmengine_registry
import pytest
from _helpers import ROOT, run_tool
from mmengine.config import Config
from mmengine.registry import Registry

import mmbeit.registry as mmbeit_registry

SCOPES = ('mmbeit', 'mmpretrain', 'mmseg')
CONFIGS = sorted(p for p in glob.glob(f'{ROOT}/configs/**/*.py', recursive=True)
                 if '/_base_/' not in p)


def test_every_mmengine_registry_has_a_direct_child():
    roots = {name: obj for name, obj in vars(mmengine_registry).items()
             if isinstance(obj, Registry) and name.isupper()}
    assert len(roots) >= 20, sorted(roots)
    for name, root in roots.items():
        ours = getattr(mmbeit_registry, name, None)
        assert isinstance(ours, Registry), f'mmbeit.registry lacks {name}'
        assert ours.parent is root, f'{name}: parent is {ours.parent}, not mmengine root'
        assert ours.scope == 'mmbeit', f'{name}: scope {ours.scope}'
        assert ours._locations and all(loc.startswith('mmbeit.') for loc in ours._locations)
        assert name in mmbeit_registry.__all__


def registered():
    """{registry name: {type name: 'module:qualname'}} of what mmbeit registers, after
    importing every registry's locations."""
    out = {}
    for name in mmbeit_registry.__all__:
        reg = getattr(mmbeit_registry, name)
        reg.import_from_location()
        out[name] = {k: f'{v.__module__}:{v.__qualname__}' for k, v in reg._module_dict.items()}
    return out


def test_each_class_is_registered_from_under_its_registry_locations():
    """A fresh process imports only a registry's ``locations`` to find a name, so a class
    registered from a module outside them is found only by luck of import order."""
    classes = registered()
    assert {'BEiT', 'BEiTViT', 'BEiTV2Neck', 'MIMHead', 'VQKD', 'MIMDataPreprocessor'} <= \
        set(classes['MODELS'])
    assert {'MIMMask', 'PackMIMInputs', 'BEiTMaskedViews', 'LoadImageRGB'} <= \
        set(classes['TRANSFORMS'])
    assert 'LayerDecayOptimWrapperConstructor' in classes['OPTIM_WRAPPER_CONSTRUCTORS']
    assert {'SeededSampler'} <= set(classes['DATA_SAMPLERS'])
    assert {'IterationSeedHook', 'AsyncRuntimeInfoHook'} <= set(classes['HOOKS'])
    for name, names in classes.items():
        locations = getattr(mmbeit_registry, name)._locations
        for type_name, where in names.items():
            module = where.split(':')[0]
            assert any(module == loc or module.startswith(loc + '.') for loc in locations), \
                f'{name}: {type_name} is registered from {module}, outside {locations}'


def _cls(module, name):
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize('registry, scope, name, module, cls_name', [
    # our names in our scope, also where mmpretrain has a class of the same name
    ('MODELS', 'mmbeit', 'BEiT', 'mmbeit.models.algorithms', 'BEiT'),
    ('MODELS', 'mmbeit', 'BEiTViT', 'mmbeit.models.backbones', 'BEiTViT'),
    ('MODELS', 'mmbeit', 'VQKD', 'mmbeit.models.tokenizers', 'VQKD'),
    ('TRANSFORMS', 'mmbeit', 'MIMMask', 'mmbeit.datasets.transforms', 'MIMMask'),
    ('OPTIM_WRAPPER_CONSTRUCTORS', 'mmbeit', 'LayerDecayOptimWrapperConstructor',
     'mmbeit.engine.optimizers', 'LayerDecayOptimWrapperConstructor'),
    ('TASK_UTILS', 'mmbeit', 'BlockwiseMaskGenerator', 'mmbeit.datasets.transforms',
     'BlockwiseMaskGenerator'),
    # the same bare name in mmpretrain's scope is theirs; the prefix reaches across
    ('MODELS', 'mmpretrain', 'BEiTViT', 'mmpretrain.models.backbones', 'BEiTViT'),
    ('MODELS', 'mmpretrain', 'mmbeit.BEiTViT', 'mmbeit.models.backbones', 'BEiTViT'),
    ('MODELS', 'mmseg', 'mmbeit.BEiTViT', 'mmbeit.models.backbones', 'BEiTViT'),
    ('MODELS', 'mmbeit', 'mmpretrain.BEiTViT', 'mmpretrain.models.backbones', 'BEiTViT'),
    ('MODELS', 'mmbeit', 'mmpretrain.ImageClassifier', 'mmpretrain.models', 'ImageClassifier'),
    ('MODELS', 'mmbeit', 'mmseg.EncoderDecoder', 'mmseg.models', 'EncoderDecoder'),
    ('TRANSFORMS', 'mmbeit', 'mmseg.RandomFlip', 'mmseg.datasets.transforms', 'RandomFlip'),
    ('DATASETS', 'mmbeit', 'mmpretrain.ImageNet', 'mmpretrain.datasets', 'ImageNet'),
    ('METRICS', 'mmbeit', 'mmseg.IoUMetric', 'mmseg.evaluation', 'IoUMetric'),
    # names mmbeit does not define fall back to mmengine's root registries
    ('TRANSFORMS', 'mmbeit', 'RandomFlip', 'mmcv.transforms', 'RandomFlip'),
    ('OPTIMIZERS', 'mmbeit', 'AdamW', 'torch.optim', 'AdamW'),
    ('OPTIM_WRAPPERS', 'mmbeit', 'OptimWrapper', 'mmengine.optim', 'OptimWrapper'),
    ('PARAM_SCHEDULERS', 'mmbeit', 'CosineAnnealingLR', 'mmengine.optim', 'CosineAnnealingLR'),
    ('HOOKS', 'mmbeit', 'CheckpointHook', 'mmengine.hooks', 'CheckpointHook'),
    ('LOOPS', 'mmbeit', 'EpochBasedTrainLoop', 'mmengine.runner', 'EpochBasedTrainLoop'),
    ('DATA_SAMPLERS', 'mmbeit', 'DefaultSampler', 'mmengine.dataset', 'DefaultSampler'),
    ('DATASETS', 'mmbeit', 'ConcatDataset', 'mmengine.dataset', 'ConcatDataset'),
    ('WEIGHT_INITIALIZERS', 'mmbeit', 'Pretrained', 'mmengine.model.weight_init',
     'PretrainedInit'),
    ('VISUALIZERS', 'mmbeit', 'Visualizer', 'mmengine.visualization', 'Visualizer'),
])
def test_scope_resolution_and_fallback(registry, scope, name, module, cls_name):
    with getattr(mmbeit_registry, registry).switch_scope_and_registry(scope) as reg:
        got = reg.get(name)
    assert got is _cls(module, cls_name), (registry, scope, name, got)


def test_an_unknown_name_is_not_found_in_any_scope():
    for scope in SCOPES:
        with mmbeit_registry.MODELS.switch_scope_and_registry(scope) as reg:
            assert reg.get('NoSuchModel') is None
    with pytest.raises(KeyError, match='NoSuchModel is not in the mmbeit::model registry'):
        mmbeit_registry.MODELS.build(dict(type='NoSuchModel'))


# --------------------------------------------------------------------------------------
# the names the configs use
# --------------------------------------------------------------------------------------
# Which registry builds a dict, by the key it sits under: a top-level config key sets it
# for its subtree, these inner keys switch it; any other key keeps its parent's. Top-level
# keys not listed are plain variables of the config (a base pipeline, a norm_cfg), checked
# where they are used.
TOP = {'model': 'MODELS', 'model_wrapper_cfg': 'MODEL_WRAPPERS',
       'train_dataloader': 'DATASETS', 'val_dataloader': 'DATASETS',
       'test_dataloader': 'DATASETS', 'default_hooks': 'HOOKS', 'custom_hooks': 'HOOKS',
       'train_cfg': 'LOOPS', 'val_cfg': 'LOOPS', 'test_cfg': 'LOOPS',
       'val_evaluator': 'METRICS', 'test_evaluator': 'METRICS',
       'param_scheduler': 'PARAM_SCHEDULERS', 'optim_wrapper': 'OPTIM_WRAPPERS',
       'visualizer': 'VISUALIZERS', 'log_processor': 'LOG_PROCESSORS'}
INNER = {'init_cfg': 'WEIGHT_INITIALIZERS', 'pipeline': 'TRANSFORMS',
         'sampler': 'DATA_SAMPLERS', 'batch_sampler': 'DATA_SAMPLERS',
         'collate_fn': 'FUNCTIONS', 'optimizer': 'OPTIMIZERS', 'vis_backends': 'VISBACKENDS',
         # mmpretrain's ClsDataPreprocessor builds train_cfg.augments from its own registry
         'augments': 'mmpretrain:BATCH_AUGMENTS',
         # MIMMask builds its generator in mmbeit's scope whatever the dataset's scope is
         'generator': 'mmbeit:TASK_UTILS',
         # a dataloader config inside a hook (KNNMonitorHook's bank / queries)
         'dataset': 'DATASETS'}
# Inside a model the same keys can mean other registries: mmdet's heads build their anchor
# generators, box coders, assigners and samplers from TASK_UTILS; its RoI extractors and
# NMS calls take the type as the name of an mmcv.ops function or class (no registry).
MODEL_INNER = {'anchor_generator': 'TASK_UTILS', 'prior_generator': 'TASK_UTILS',
               'bbox_coder': 'TASK_UTILS', 'assigner': 'TASK_UTILS', 'sampler': 'TASK_UTILS',
               'roi_layer': 'mmcv.ops', 'nms': 'mmcv.ops'}


def config_types(cfg):
    """(key path, registry, scope, type name) of every ``type`` in the config, with the
    scope each is built in (``_scope_`` switches it for its subtree)."""
    found = []

    def walk(node, path, registry, scope):
        if isinstance(node, dict):
            scope = node.get('_scope_', scope)
            if isinstance(node.get('type'), str):
                found.append(('.'.join(path), registry, scope, node['type']))
            for key, value in node.items():
                reg, sc = registry, scope
                if path[0] == 'model' and key in MODEL_INNER:
                    reg = MODEL_INNER[key]
                elif key in INNER:
                    reg = INNER[key]
                    if ':' in reg:
                        sc, reg = reg.split(':')
                walk(value, path + [str(key)], reg, sc)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, path + [str(i)], registry, scope)

    scope = cfg.get('default_scope', 'mmbeit')
    for key, value in cfg.to_dict().items():
        if key in TOP:
            walk(value, [key], TOP[key], scope)
    constructor = (cfg.get('optim_wrapper') or {}).get('constructor')
    if constructor:
        found.append(('optim_wrapper.constructor', 'OPTIM_WRAPPER_CONSTRUCTORS', scope,
                      constructor))
    return found


def _registry(scope, name):
    """The ``name`` registry of package ``scope`` with its classes imported (None if that
    package has no such registry)."""
    reg = getattr(importlib.import_module(f'{scope}.registry'), name, None)
    if reg is not None:
        reg.import_from_location()
    return reg


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.split('/configs/')[1])
def test_config_type_names_resolve_to_the_class_meant(path):
    """Every ``type`` resolves in the scope it is built in. A bare name means the scope's
    own class: where mmbeit registers the name too it must be ours (a config that wants the
    other one writes the prefix), and a name found only by falling back to mmengine's root
    must not also be a different class of mmbeit, mmpretrain or mmseg (then the config
    would silently get the generic one)."""
    problems = []
    entries = config_types(Config.fromfile(path))
    assert any(e[1] == 'MODELS' for e in entries), 'no model type found'
    for where, registry, scope, name in entries:
        if registry == 'mmcv.ops':
            import mmcv.ops
            if not callable(getattr(mmcv.ops, name, None)):
                problems.append(f'{where}: {name!r} is not an mmcv.ops function or class')
            continue
        # built from mmbeit's registry of that kind in that scope (mmpretrain's own for
        # mmpretrain-only kinds), as mmengine's build_from_cfg does
        base = _registry('mmbeit', registry) or _registry(scope, registry)
        with base.switch_scope_and_registry(scope) as reg:
            cls = reg.get(name)
        if cls is None:
            problems.append(f'{where}: {name!r} is not in the {scope} {registry} registry')
            continue
        if '.' in name:
            prefix, bare = name.split('.', 1)
            owner = _registry(prefix, registry)
            if owner is not None and owner.get(bare) is not cls:
                problems.append(f'{where}: {name!r} is not {prefix}\'s class')
            continue
        ours = getattr(_registry('mmbeit', registry), '_module_dict', {}).get(name)
        if ours is not None and cls is not ours:
            problems.append(f'{where}: {name!r} in scope {scope} gives '
                            f'{cls.__module__}.{cls.__qualname__}, not ours; write '
                            f"'mmbeit.{name}'")
        own = _registry(scope, registry)
        if own is not None and name in own._module_dict:
            continue  # the scope's own class
        others = {s: _registry(s, registry)._module_dict.get(name) for s in SCOPES
                  if _registry(s, registry) is not None}
        clash = sorted(s for s, c in others.items() if c is not None and c is not cls)
        if clash:
            problems.append(f'{where}: {name!r} falls back to {cls.__module__}.'
                            f'{cls.__qualname__} while {clash} define their own; write the '
                            'scope prefix')
    assert not problems, '\n'.join(problems)


MIXED_CONFIG = '''
default_scope = 'mmbeit'
# Foreign containers build their own children (and defaults such as a head's loss) in
# their own scope (`_scope_`); our parts inside are named with the `mmbeit.` prefix.
seg = dict(
    type='EncoderDecoder', _scope_='mmseg',
    data_preprocessor=dict(type='SegDataPreProcessor', size=(32, 32),
                           mean=[0., 0., 0.], std=[1., 1., 1.]),
    backbone=dict(type='mmbeit.BEiTViT', arch=dict(embed_dims=32, num_layers=4, num_heads=2,
                  feedforward_channels=64), img_size=32, patch_size=8, out_indices=(0, 1, 2, 3),
                  out_type='featmap'),
    neck=dict(type='Feature2Pyramid', embed_dim=32, rescales=[4, 2, 1, 0.5],
              norm_cfg=dict(type='BN', requires_grad=True)),
    decode_head=dict(type='FCNHead', in_channels=32, channels=16, num_convs=1,
                     in_index=2, num_classes=3, norm_cfg=dict(type='BN')),
)
cls = dict(
    type='ImageClassifier', _scope_='mmpretrain',
    backbone=dict(type='mmbeit.BEiTViT', arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                  feedforward_channels=64), img_size=32, patch_size=8,
                  out_type='avg_featmap'),
    head=dict(type='LinearClsHead', num_classes=3, in_channels=32),
)
'''

FRESH = '''
import json, sys
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
import mmbeit.registry as R

# 1. before anything is built: the registries find our classes through their locations
want = json.loads(sys.argv[1])
got = {}
for name, names in want.items():
    for scope in ('mmbeit', 'mmpretrain', 'mmseg'):
        with getattr(R, name).switch_scope_and_registry(scope) as reg:
            for type_name in names:
                # our bare name in our scope; 'mmbeit.NAME' from the two foreign scopes
                key = type_name if scope == 'mmbeit' else f'mmbeit.{type_name}'
                cls = reg.get(key)
                got.setdefault(name, {}).setdefault(type_name, []).append(
                    None if cls is None else f'{cls.__module__}:{cls.__qualname__}')
print('RESOLVED' + json.dumps(got))

# 2. a config mixing the three scopes builds
cfg = Config.fromfile(sys.argv[2])
init_default_scope(cfg.default_scope)
seg, cls = R.MODELS.build(cfg.seg), R.MODELS.build(cfg.cls)
print(type(seg).__module__, type(seg.backbone).__module__, type(seg.neck).__module__)
print(type(cls).__module__, type(cls.backbone).__module__, type(cls.head).__module__)
x = torch.randn(1, 3, 32, 32)
print(tuple(seg.extract_feat(x)[0].shape), tuple(cls(x).shape))
'''


@pytest.fixture(scope='module')
def fresh_process(tmp_path_factory):
    """One fresh interpreter (registration state cannot leak in from other tests): what
    mmbeit registers, resolved there, and the output of building the mixed config."""
    tmp = tmp_path_factory.mktemp('registry')
    classes = {k: v for k, v in registered().items() if v}
    cfg = tmp / 'mixed.py'
    cfg.write_text(textwrap.dedent(MIXED_CONFIG))
    script = tmp / 'fresh.py'
    script.write_text(FRESH)
    lines = run_tool([script, json.dumps(classes), cfg]).stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith('RESOLVED'))
    return classes, json.loads(lines[i][len('RESOLVED'):]), lines[i + 1:]


def test_a_fresh_process_finds_every_class_through_the_locations_alone(fresh_process):
    """Only ``mmbeit.registry`` imported: each name mmbeit registers resolves, lazily, to
    the same class as here, from mmbeit's scope and as ``mmbeit.NAME`` from mmpretrain's
    and mmseg's."""
    classes, got, _ = fresh_process
    want = {name: {k: [v] * len(SCOPES) for k, v in names.items()}
            for name, names in classes.items()}
    assert got == want


def test_config_mixing_three_scopes_builds_in_fresh_process(fresh_process):
    out = fresh_process[2]
    assert out[0].split() == ['mmseg.models.segmentors.encoder_decoder',
                              'mmbeit.models.backbones.beit_vit',
                              'mmseg.models.necks.featurepyramid']
    assert out[1].split() == ['mmpretrain.models.classifiers.image',
                              'mmbeit.models.backbones.beit_vit',
                              'mmpretrain.models.heads.linear_head']
    # Feature2Pyramid gives stride 4 from the 32/8 = 4x4 grid: 16x16; classifier: 3 logits.
    assert out[2] == '(1, 32, 16, 16) (1, 3)'
