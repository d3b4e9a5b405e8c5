"""mmbeit's registries mirror mmengine's and mix with mmpretrain's and mmseg's."""
import inspect
import textwrap

import mmengine.registry as mmengine_registry
from _helpers import run_tool
from mmengine.registry import Registry

import mmbeit.registry as mmbeit_registry


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


def test_locations_are_importable_packages():
    import importlib
    for name in mmbeit_registry.__all__:
        for loc in getattr(mmbeit_registry, name)._locations:
            module = importlib.import_module(loc)
            assert inspect.ismodule(module)


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

BUILD_SCRIPT = '''
import sys, torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmbeit.registry import MODELS
cfg = Config.fromfile(sys.argv[1])
init_default_scope(cfg.default_scope)
seg, cls = MODELS.build(cfg.seg), MODELS.build(cfg.cls)
print(type(seg).__module__, type(seg.backbone).__module__, type(seg.neck).__module__)
print(type(cls).__module__, type(cls.backbone).__module__, type(cls.head).__module__)
x = torch.randn(1, 3, 32, 32)
print(tuple(seg.extract_feat(x)[0].shape), tuple(cls(x).shape))
'''


def test_config_mixing_three_scopes_builds_in_fresh_process(tmp_path):
    cfg = tmp_path / 'mixed.py'
    cfg.write_text(textwrap.dedent(MIXED_CONFIG))
    script = tmp_path / 'build.py'
    script.write_text(BUILD_SCRIPT)
    out = run_tool([script, cfg]).stdout.split('\n')
    assert out[0].split() == ['mmseg.models.segmentors.encoder_decoder',
                              'mmbeit.models.backbones.beit_vit',
                              'mmseg.models.necks.featurepyramid']
    assert out[1].split() == ['mmpretrain.models.classifiers.image',
                              'mmbeit.models.backbones.beit_vit',
                              'mmpretrain.models.heads.linear_head']
    # Feature2Pyramid gives stride 4 from the 32/8 = 4x4 grid: 16x16; classifier: 3 logits.
    assert out[2] == '(1, 32, 16, 16) (1, 3)'
