"""Exports (mmbeit -> timm, Hugging Face transformers, ONNX): parity of the exported models
with ours on random weights of the real key layouts, the round trip through the import
converters, the keys dropped and the errors (mmbeit/converters/export.py,
tools/model_converters/export_checkpoint.py, docs/export.md)."""
import json
import math
import os.path as osp
import sys

import pytest
import torch
import torch.nn as nn
from _helpers import ROOT, randomize_, run_tool, tool_main
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmbeit.checkpoint import save_checkpoint
from mmbeit.converters import (
    ExportError,
    convert,
    export_state_dict,
    hf_segmentation_blockers,
    settings_from_model,
    write_export,
)
from mmbeit.engine.runtime import replace_sync_bn
from mmbeit.models.backbones.beit_vit import BEiTViT

timm = pytest.importorskip('timm')
transformers = pytest.importorskip('transformers')

TOOL = osp.join(ROOT, 'tools', 'model_converters', 'export_checkpoint.py')
DEMO = osp.join(ROOT, 'configs', 'demo')
CLS_CFG = osp.join(DEMO, 'beit_vit-tiny-p8_scratch-30e_demo-64.py')
PT_CFG = osp.join(DEMO, 'beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py')
SEG_CFG = osp.join(DEMO, 'beit_vit-tiny-p8_upernet-scratch-1k_demo-ade-128.py')
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
pytestmark = pytest.mark.usefixtures('one_thread')


class Classifier(nn.Module):
    """What the export reads of mmpretrain's ImageClassifier: ``backbone``, ``head.fc``."""

    def __init__(self, num_classes=5, **backbone):
        super().__init__()
        cfg = dict(arch=TINY, img_size=32, patch_size=8, out_type='avg_featmap')
        cfg.update(backbone)
        self.backbone = BEiTViT(**cfg)
        self.head = nn.Module()
        self.head.fc = nn.Linear(self.backbone.embed_dims, num_classes)
        randomize_(self)
        self.eval()

    def forward(self, x):
        return self.head.fc(self.backbone(x)[-1])


def _diff(a, b):
    return (a - b).abs().max().item()


def _build(config, options=None, pretrain=False):
    """A model of a config with random weights of every kind (tables, gammas, BN
    statistics), built as the runner builds it."""
    import mmbeit.models  # noqa: F401
    from mmbeit.registry import MODELS
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options or {})
    replace_sync_bn(cfg.model)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    randomize_(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval(), cfg


def _pretrain_model():
    return _build(PT_CFG)[0]


# ----------------------------------------------------------------------------- timm

def test_timm_beitv2_base_classifier_exact_layout():
    """Our ViT-B/16 fine-tuned classifier (BEiT v2 settings: per-layer tables, LayerScale,
    mean pooling through fc_norm) loads strictly into timm's beitv2_base_patch16_224 built
    as printed; logits agree; the import converter gives back the same tensors."""
    model = Classifier(num_classes=10, arch='base', img_size=224, patch_size=16)
    sd = model.state_dict()
    result = export_state_dict(sd, settings_from_model(model), 'timm')
    assert result.config['model_name'] == 'beitv2_base_patch16_224'
    assert result.config['kwargs'] == {'num_classes': 10}
    assert result.dropped == {}
    ref = timm.create_model('beitv2_base_patch16_224', pretrained=False,
                            **result.config['kwargs']).eval()
    ref.load_state_dict(result.state_dict, strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    assert ours.abs().max() > 0.1
    assert _diff(ours, theirs) <= 1e-5
    back, report = convert(result.state_dict, 'timm')
    assert report.kind == 'classifier' and report.dropped == {}
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize('variant', ['abs-pos, cls pooling, no q/v bias, no LayerScale',
                                     'non-square grid'])
def test_timm_and_hf_other_settings(variant, tmp_path):
    """The other poolings and options both libraries have: absolute position embedding,
    no relative position bias, cls-token pooling after the final norm, no q/v bias, no
    LayerScale (HF's query / value biases are filled with zeros). A non-square input:
    timm computes it as we do; transformers does not, so --to hf refuses it."""
    if variant.startswith('abs'):
        model = Classifier(use_abs_pos_emb=True, rel_pos_bias=None, final_norm=True,
                           out_type='cls_token', qv_bias=False, layer_scale_init_value=0.)
        x = torch.randn(2, 3, 32, 32)
    else:
        model = Classifier(img_size=(32, 48))
        x = torch.randn(2, 3, 32, 48)
    settings = settings_from_model(model)
    with torch.no_grad():
        ours = model(x)
    res = export_state_dict(model.state_dict(), settings, 'timm')
    ref = timm.create_model(res.config['model_name'], **res.config['kwargs']).eval()
    ref.load_state_dict(res.state_dict, strict=True)
    with torch.no_grad():
        assert _diff(ref(x), ours) <= 1e-5
    if not variant.startswith('abs'):
        assert res.config['kwargs']['img_size'] == [32, 48]
        with pytest.raises(ExportError, match='input is 32x48.*width x height'):
            export_state_dict(model.state_dict(), settings, 'hf')
        return
    res = export_state_dict(model.state_dict(), settings, 'hf')
    write_export(res, str(tmp_path / 'hf'))
    hf, info = transformers.BeitForImageClassification.from_pretrained(
        str(tmp_path / 'hf'), output_loading_info=True)
    assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys'))
    with torch.no_grad():
        assert _diff(hf.eval()(pixel_values=x).logits, ours) <= 1e-5
    assert res.config['use_mean_pooling'] is False
    assert res.config['layer_scale_init_value'] == 0.0
    assert set(res.filled) == {f'beit.encoder.layer.{i}.attention.attention.{n}.bias'
                               for i in (0, 1) for n in ('query', 'value')}
    assert not res.state_dict['beit.encoder.layer.1.attention.attention.value.bias'].any()


def test_timm_pretrained_backbone_headless():
    """A BEiT v2 pretraining checkpoint (shared table, mask token, final norm, aggregation
    blocks, MIM head): the backbone goes to timm's headless model with its shared table
    (or with per-layer copies); the pretraining-only parts are listed as dropped."""
    model = _pretrain_model()
    sd = model.state_dict()
    settings = settings_from_model(model)
    assert settings['model_kind'] == 'pretrain'
    res = export_state_dict(sd, settings, 'timm')
    assert res.kind == 'backbone'
    pretraining_only = {k for k in sd if k.startswith(('neck.cls_pt_layers.', 'head.lm_head.'))}
    assert len(pretraining_only) == 2 * 15 + 2
    assert set(res.dropped) == pretraining_only | {'backbone.mask_token'}
    assert 'no place' in res.dropped['backbone.mask_token']
    assert 'pretraining' in res.dropped['head.lm_head.weight']
    kwargs = res.config['kwargs']
    assert kwargs['num_classes'] == 0 and kwargs['global_pool'] == 'token'
    assert kwargs['use_shared_rel_pos_bias'] is True and kwargs['use_rel_pos_bias'] is False
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.backbone(x)[-1]   # [B, N+1, D] after the final norm
    for expand in (False, True):
        res = export_state_dict(sd, settings, 'timm', expand_rel_pos=expand)
        ref = timm.create_model(res.config['model_name'], **res.config['kwargs']).eval()
        ref.load_state_dict(res.state_dict, strict=True)
        with torch.no_grad():
            assert _diff(ref.forward_features(x), tokens) <= 1e-5
            assert _diff(ref(x), tokens[:, 0]) <= 1e-5
    assert 'use_shared_rel_pos_bias' not in res.config['kwargs']
    table = sd['backbone.rel_pos_bias.relative_position_bias_table']
    assert all(torch.equal(res.state_dict[f'blocks.{i}.attn.relative_position_bias_table'],
                           table) for i in range(4))
    # back through the import converter: the same backbone (timm's names = ours)
    back, _ = convert(export_state_dict(sd, settings, 'timm').state_dict, 'timm',
                      kind='backbone')
    assert set(back) == {k[len('backbone.'):] for k in sd if k.startswith('backbone.')} - \
        {'mask_token'}
    assert all(torch.equal(v, sd['backbone.' + k]) for k, v in back.items())


# ----------------------------------------------------------------------------- HF

def test_hf_classifier_and_pretrained_backbone(tmp_path):
    """BeitForImageClassification (mean pooling) and BeitModel (a pretrained backbone:
    shared table, mask token kept, final norm, cls pooling) read back by
    ``from_pretrained`` with no missing or unexpected key; outputs agree; the import
    converter gives back the same tensors."""
    model = Classifier(num_classes=7)
    sd = model.state_dict()
    res = export_state_dict(sd, settings_from_model(model), 'hf')
    assert res.dropped == {} and res.filled == {}
    write_export(res, str(tmp_path / 'cls'))
    hf, info = transformers.BeitForImageClassification.from_pretrained(
        str(tmp_path / 'cls'), output_loading_info=True)
    assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys'))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _diff(hf.eval()(pixel_values=x).logits, model(x)) <= 1e-5
    back, report = convert(res.state_dict, 'hf')
    assert report.kind == 'classifier' and set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)

    pretrain = _pretrain_model()
    sd = pretrain.state_dict()
    res = export_state_dict(sd, settings_from_model(pretrain), 'hf')
    assert res.config['architectures'] == ['BeitModel']
    assert res.config['use_shared_relative_position_bias'] is True
    assert torch.equal(res.state_dict['embeddings.mask_token'], sd['backbone.mask_token'])
    assert 'backbone.mask_token' not in res.dropped
    write_export(res, str(tmp_path / 'backbone'))
    hf, info = transformers.BeitModel.from_pretrained(str(tmp_path / 'backbone'),
                                                      output_loading_info=True)
    assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys'))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = pretrain.backbone(x)[-1]
        out = hf.eval()(pixel_values=x)
    assert _diff(out.last_hidden_state, tokens) <= 1e-5
    assert _diff(out.pooler_output, tokens[:, 0]) <= 1e-5
    back, _ = convert(res.state_dict, 'hf', kind='backbone')
    assert set(back) == {k[len('backbone.'):] for k in sd if k.startswith('backbone.')}
    assert all(torch.equal(v, sd['backbone.' + k]) for k, v in back.items())


SEG_HF_OK = {
    'model.backbone.arch': dict(embed_dims=32, num_layers=6, num_heads=2,
                                feedforward_channels=64),
    'model.backbone.img_size': 64, 'model.backbone.patch_size': 16,
    'model.data_preprocessor.size': (64, 64),
    'model.neck.embed_dim': 32, 'model.neck.rescales': [4, 2, 1, 0.5],
    'model.decode_head.in_channels': [32] * 4, 'model.decode_head.channels': 32,
    'model.auxiliary_head.in_channels': 32, 'model.auxiliary_head.channels': 16,
}


def test_hf_semantic_segmentation_when_the_computation_matches(tmp_path):
    """An UperNet that BeitForSemanticSegmentation can compute (rescales 4, 2, 1, 0.5,
    decode channels = width, neck fed from blocks <= L - 2): the decode-head logits agree.
    Feeding HF's neck one block lower (out_indices - 1) is measurably different, so the
    comparison sees which blocks are used."""
    model, _ = _build(SEG_CFG, SEG_HF_OK)
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(30)  # logits of order 1
    settings = settings_from_model(model)
    assert hf_segmentation_blockers(settings) == []
    res = export_state_dict(model.state_dict(), settings, 'hf')
    assert res.config['out_indices'] == [2, 3, 4, 5]
    folder = str(tmp_path / 'seg')
    write_export(res, folder)
    hf, info = transformers.BeitForSemanticSegmentation.from_pretrained(
        folder, output_loading_info=True)
    assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys'))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model(x, mode='tensor')               # decode-head logits, stride 4
        theirs = hf.eval()(pixel_values=x).logits
    assert ours.shape == theirs.shape == (2, 8, 16, 16) and ours.abs().max() > 0.5
    assert _diff(ours, theirs) <= 1e-5
    shifted = dict(res.config, out_indices=[1, 2, 3, 4])
    with open(osp.join(folder, 'config.json'), 'w') as f:
        json.dump(shifted, f)
    with torch.no_grad():
        other = transformers.BeitForSemanticSegmentation.from_pretrained(folder).eval()(
            pixel_values=x).logits
    assert _diff(other, ours) > 1e-3
    back, _ = convert(res.state_dict, 'hf')
    sd = model.state_dict()
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_hf_semantic_segmentation_refused_for_our_configs():
    """The demo UperNet (and the real configs, which feed the last block to the neck):
    refused, each reason named."""
    model, _ = _build(SEG_CFG)
    settings = settings_from_model(model)
    with pytest.raises(ExportError) as err:
        export_state_dict(model.state_dict(), settings, 'hf')
    msg = str(err.value)
    assert 'blocks [0, 1, 2, 3]' in msg and 'hidden_states[out_indices[j] - 1]' in msg
    assert 'rescales [2, 1, 0.5, 0.25]' in msg
    assert 'the decode head has 64 channels' in msg
    # the real configs' structure with a matching neck and head: only the block index
    real = dict(settings, neck=dict(type='Feature2Pyramid', rescales=[4, 2, 1, 0.5]),
                decode_head=dict(settings['decode_head'], channels=128))
    why = hf_segmentation_blockers(real)
    assert len(why) == 1 and 'this model uses [3]' in why[0]


# ----------------------------------------------------------------------------- errors

def test_unplaceable_keys_are_named_and_settings_are_checked():
    model = Classifier()
    settings = settings_from_model(model)
    sd = dict(model.state_dict())
    sd['backbone.blocks.0.attn.mystery'] = torch.zeros(1)
    sd['neck.unknown.weight'] = torch.zeros(1)
    with pytest.raises(ExportError) as err:
        export_state_dict(sd, settings, 'timm')
    assert "['backbone.blocks.0.attn.mystery', 'neck.unknown.weight']" in str(err.value)
    sd = dict(model.state_dict())
    del sd['backbone.blocks.1.gamma_2']
    with pytest.raises(ExportError, match=r"missing \['backbone.blocks.1.gamma_2'\]"):
        export_state_dict(sd, settings, 'hf')
    with pytest.raises(ExportError, match='timm has no segmentation models'):
        export_state_dict(model.state_dict(), settings, 'timm', kind='segmentor')
    with pytest.raises(ExportError, match='needs a decode_head; this is a classifier'):
        export_state_dict(model.state_dict(), settings, 'hf', kind='segmentor')
    probe = Classifier(out_indices=0)
    with pytest.raises(ExportError, match=r'returns blocks \[0\].*last block \(1\)'):
        export_state_dict(probe.state_dict(), settings_from_model(probe), 'timm')


# ----------------------------------------------------------------------------- tool

# the demo configs, narrower and (the classifier) shallower: tracing time grows with depth
SMALL = {
    'cls': (CLS_CFG, {'model.backbone.arch': dict(embed_dims=64, num_layers=2, num_heads=4,
                                                  feedforward_channels=256),
                      'model.head.in_channels': 64}),
    'seg': (SEG_CFG, {'model.backbone.arch': dict(embed_dims=64, num_layers=4, num_heads=2,
                                                  feedforward_channels=128),
                      'model.neck.embed_dim': 64, 'model.decode_head.in_channels': [64] * 4,
                      'model.decode_head.channels': 32, 'model.decode_head.pool_scales': (1, 2),
                      'model.auxiliary_head.in_channels': 64,
                      'model.auxiliary_head.channels': 16}),
}


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A demo classifier and a demo segmentor with random weights, saved as a run saves
    them (state_dict + meta with the config text): name -> (path, config)."""
    tmp = tmp_path_factory.mktemp('export')
    out = {}
    for name, (config, options) in SMALL.items():
        model, cfg = _build(config, options)
        if name == 'seg':
            with torch.no_grad():
                model.decode_head.conv_seg.weight.mul_(30)
        path = str(tmp / f'{name}.pth')
        saved = Config.fromfile(config)
        saved.merge_from_dict(options)
        save_checkpoint({'state_dict': model.state_dict(), 'meta': {'cfg': saved.pretty_text}},
                        path)
        out[name] = (path, saved)
    return out


def _record(folder):
    with open(osp.join(folder, 'export.json'), encoding='utf-8') as f:
        return json.load(f)


@pytest.mark.slow  # a fresh process importing mmpretrain, mmseg and timm: 10-19 s here
def test_tool_timm_from_the_config_saved_in_the_checkpoint(checkpoints, tmp_path):
    """The command line in a fresh process: no --config (the run's config is read from the
    checkpoint), the exact create_model call printed, the folder loads with timm's
    local-dir source, parity measured and written down; an existing folder is kept."""
    out = tmp_path / 'timm'
    res = run_tool([TOOL, checkpoints['cls'][0], '--to', 'timm', '--out', out])
    call = ("timm.create_model('beitv2_base_patch16_224', num_classes=8, img_size=64, "
            'patch_size=8, embed_dim=64, depth=2, num_heads=4)')
    assert call in res.stdout
    record = _record(out)
    assert record['timm_model'] == 'beitv2_base_patch16_224'
    assert record['timm_kwargs'] == dict(num_classes=8, img_size=64, patch_size=8,
                                         embed_dim=64, depth=2, num_heads=4)
    assert record['parity_max_abs_diff'] <= 1e-5
    ref = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert ref.num_classes == 8 and ref.pretrained_cfg['mean'] == [0.485, 0.456, 0.406]
    res = run_tool([TOOL, checkpoints['cls'][0], '--to', 'timm', '--out', out], check=False)
    assert res.returncode != 0 and 'exists; pass --force' in res.stderr


def test_tool_hf_segmentor_names_why(checkpoints, tmp_path):
    msg = tool_main(TOOL, checkpoints['seg'][0], '--to', 'hf', '--out', tmp_path / 'hf')
    assert msg.startswith('error: cannot export')
    assert "BeitForSemanticSegmentation does not compute what this model computes" in msg
    assert 'rescales [2, 1, 0.5, 0.25]' in msg and '--to onnx' in msg
    assert 'the decode head has 32 channels on inputs [64, 64, 64, 64]' in msg
    assert not osp.exists(tmp_path / 'hf')


def test_tool_pretraining_checkpoint_to_hf_backbone(tmp_path):
    """A pretraining checkpoint (its config has no test pipeline, which init_model asks
    for) exports its backbone; parity is measured on the final-normed tokens."""
    model = _pretrain_model()
    path = str(tmp_path / 'pretrain.pth')
    save_checkpoint({'state_dict': model.state_dict()}, path)
    assert tool_main(TOOL, path, '--to', 'hf', '--out', tmp_path / 'hf', '--config',
                     PT_CFG) == ''
    record = _record(tmp_path / 'hf')
    assert record['kind'] == 'backbone' and record['parity_max_abs_diff'] <= 1e-5
    assert set(record['dropped']) == {k for k in model.state_dict() if k.startswith(
        ('neck.cls_pt_layers.', 'head.lm_head.'))}
    msg = tool_main(TOOL, path, '--to', 'timm', '--out', tmp_path / 'timm')
    assert msg == f'error: {path!r} holds no config (meta.cfg): pass the config it was ' \
        'trained with as --config'


def test_onnx_without_its_packages_says_how_to_install(monkeypatch):
    from mmbeit.converters import export_onnx
    model = Classifier()
    monkeypatch.setitem(sys.modules, 'onnxscript', None)  # import fails
    with pytest.raises(ExportError, match=r'pip install -e \.\[export\]'):
        export_onnx(model, settings_from_model(model), 'never.onnx')


def _onnx_logits(path, x):
    import onnxruntime
    sess = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return torch.from_numpy(sess.run(None, {'image': x.numpy()})[0])


@pytest.mark.slow  # torch.export + ONNX translation: 8-13 s each here
@pytest.mark.parametrize('name', ['cls', 'seg'])
def test_tool_onnx_classifier_and_segmentor(name, checkpoints, tmp_path):
    """ONNX through the tool (in this process); onnxruntime agrees with our model (the
    segmentor: mmseg's own encode_decode of the whole input) for two batch sizes; the
    contract is in export.json and in the file's metadata."""
    pytest.importorskip('onnxruntime')
    onnx = pytest.importorskip('onnx')
    from mmbeit.apis import init_model
    out = tmp_path / name
    path, config = checkpoints[name]
    assert tool_main(TOOL, path, '--to', 'onnx', '--out', out) == ''
    record = _record(out)
    assert record['parity_max_abs_diff'] <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(out / 'model.onnx')).metadata_props}
    contract = json.loads(meta['mmbeit_contract'])
    assert contract == record['contract']
    model = init_model(config, path)
    size = 64 if name == 'cls' else 128
    assert contract['input']['shape'] == ['batch', 3, size, size]
    assert contract['input']['mean'] == [123.675, 116.28, 103.53]
    for batch in (1, 4):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            if name == 'cls':
                ours = model(x, mode='tensor')
            else:
                ours = model.encode_decode(x, [dict(img_shape=(size, size))] * batch)
        theirs = _onnx_logits(out / 'model.onnx', x)
        assert theirs.shape == ours.shape == ((batch, 8) if name == 'cls'
                                              else (batch, 8, size, size))
        assert ours.abs().max() > 0.1 and math.isfinite(ours.abs().max().item())
        assert _diff(theirs, ours) <= 1e-4
