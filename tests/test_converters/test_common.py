"""Container unwrapping, kind detection, explicit-kind drops, strict target keys and the
error messages of ``mmbeit.converters.convert`` (on hand-built unilm-named state dicts)."""
import pytest
import torch

from mmbeit.checkpoint import unwrap_state_dict
from mmbeit.converters import convert, detect_kind

D = 8


def _unilm_classifier():
    sd = {
        'cls_token': torch.randn(1, 1, D),
        'patch_embed.proj.weight': torch.randn(D, 3, 4, 4),
        'patch_embed.proj.bias': torch.randn(D),
        'blocks.0.norm1.weight': torch.randn(D),
        'blocks.0.norm1.bias': torch.randn(D),
        'blocks.0.attn.qkv.weight': torch.randn(3 * D, D),
        'blocks.0.attn.q_bias': torch.randn(D),
        'blocks.0.attn.v_bias': torch.randn(D),
        'blocks.0.attn.relative_position_bias_table': torch.randn(12, 2),
        'blocks.0.attn.relative_position_index': torch.zeros(5, 5, dtype=torch.long),
        'blocks.0.attn.proj.weight': torch.randn(D, D),
        'blocks.0.attn.proj.bias': torch.randn(D),
        'blocks.0.norm2.weight': torch.randn(D),
        'blocks.0.norm2.bias': torch.randn(D),
        'blocks.0.mlp.fc1.weight': torch.randn(2 * D, D),
        'blocks.0.mlp.fc1.bias': torch.randn(2 * D),
        'blocks.0.mlp.fc2.weight': torch.randn(D, 2 * D),
        'blocks.0.mlp.fc2.bias': torch.randn(D),
        'blocks.0.gamma_1': torch.randn(D),
        'blocks.0.gamma_2': torch.randn(D),
        'fc_norm.weight': torch.randn(D),
        'fc_norm.bias': torch.randn(D),
        'head.weight': torch.randn(5, D),
        'head.bias': torch.randn(5),
    }
    return sd


def _expected_classifier_keys(sd):
    out = set()
    for k in sd:
        if k.endswith('relative_position_index'):
            continue
        out.add('head.fc.' + k[5:] if k.startswith('head.') else 'backbone.' + k)
    return out


@pytest.mark.parametrize('wrap', [
    lambda sd: sd,
    lambda sd: {'model': sd, 'epoch': 3},
    lambda sd: {'module': sd},
    lambda sd: {'meta': {'epoch': 1}, 'state_dict': sd, 'optimizer': {'state': {}}},
    lambda sd: {'model': {'module': sd}},
    lambda sd: {'state_dict': {'module.' + k: v for k, v in sd.items()}},
    lambda sd: {'module.' + k: v for k, v in sd.items()},
])
def test_container_unwrapping(wrap):
    sd = _unilm_classifier()
    out, report = convert(wrap(sd), 'unilm')
    assert report.kind == 'classifier' and report.kind_detected
    assert set(out) == _expected_classifier_keys(sd)
    assert out['backbone.blocks.0.attn.qkv.weight'] is sd['blocks.0.attn.qkv.weight']
    assert torch.equal(out['head.fc.weight'], sd['head.weight'])


def test_unwrap_reports_path_and_prefix():
    sd = _unilm_classifier()
    ckpt = {'meta': {}, 'state_dict': {'model': {'module.' + k: v for k, v in sd.items()}}}
    inner, path, prefix = unwrap_state_dict(ckpt)
    assert path == ['state_dict', 'model'] and prefix == 'module.'
    assert set(inner) == set(sd)
    _, report = convert(ckpt, 'timm')
    assert report.containers == ['state_dict', 'model']
    assert report.stripped_prefix == 'module.'
    assert "['state_dict']['model']" in str(report)


def test_non_tensor_entries_are_rejected():
    with pytest.raises(ValueError, match='epoch'):
        convert({'cls_token': torch.zeros(1, 1, D), 'epoch': 3}, 'unilm')


def test_report_lists_drops_with_reasons():
    sd = _unilm_classifier()
    out, report = convert(sd, 'unilm')
    assert report.num_source_keys == len(sd)
    assert report.num_placed == len(sd) - 1
    assert report.num_output_keys == len(out)
    assert list(report.dropped) == ['blocks.0.attn.relative_position_index']
    assert 'rebuilt' in report.dropped['blocks.0.attn.relative_position_index']
    text = str(report)
    assert 'blocks.0.attn.relative_position_index: constant index buffer' in text
    assert f'placed: {len(sd) - 1}' in text


def test_explicit_backbone_drops_classifier_head_with_reason():
    sd = _unilm_classifier()
    out, report = convert(sd, 'unilm', kind='backbone')
    assert not report.kind_detected
    assert 'head.weight' not in out and 'fc_norm.weight' in out
    assert set(report.dropped) == {'head.weight', 'head.bias',
                                   'blocks.0.attn.relative_position_index'}
    assert 'classifier head not part of a backbone' in report.dropped['head.weight']
    assert all(not k.startswith('backbone.') for k in out)


def test_detected_kind_rejects_mixed_parts():
    sd = _unilm_classifier()
    sd['lm_head.weight'] = torch.randn(16, D)
    sd['lm_head.bias'] = torch.randn(16)
    # detected as pretrain; the classifier head has no place there
    with pytest.raises(ValueError) as err:
        convert(sd, 'unilm')
    msg = str(err.value)
    assert "['head.bias', 'head.weight']" in msg
    assert '--kind classifier' in msg and '--kind pretrain' in msg
    # asking for a kind drops the other part, with its reason
    out, report = convert(sd, 'unilm', kind='pretrain')
    assert 'head.lm_head.weight' in out
    assert 'classifier head' in report.dropped['head.weight']


def test_unknown_keys_all_named_sorted_with_hint():
    sd = _unilm_classifier()
    sd['zzz.extra'] = torch.zeros(1)
    sd['aaa.extra'] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        convert(sd, 'unilm')
    msg = str(err.value)
    assert "2 source key(s) could not be placed: ['aaa.extra', 'zzz.extra']" in msg
    assert 'No --src/--kind places every key' in msg


def test_wrong_src_suggests_the_right_one():
    sd = _unilm_classifier()
    with pytest.raises(ValueError) as err:
        convert(sd, 'mmpretrain')
    msg = str(err.value)
    assert "'blocks.0.norm1.weight'" in msg
    assert '--src unilm (or timm) (detected --kind classifier)' in msg


def test_strict_target_keys():
    sd = _unilm_classifier()
    expected = _expected_classifier_keys(sd)
    out, report = convert(sd, 'unilm', strict_target_keys=expected)
    assert set(out) == expected and report.unexpected_target_keys == []
    with pytest.raises(ValueError, match=r"\['backbone.mask_token', 'backbone.norm.weight'\]"):
        convert(sd, 'unilm', strict_target_keys=expected | {'backbone.norm.weight',
                                                            'backbone.mask_token'})
    _, report = convert(sd, 'unilm', strict_target_keys=expected - {'head.fc.bias'})
    assert report.unexpected_target_keys == ['head.fc.bias']


def test_two_sources_on_one_target_is_an_error():
    sd = _unilm_classifier()
    sd['backbone.cls_token'] = sd['cls_token']
    with pytest.raises(ValueError, match='cls_token'):
        convert(sd, 'unilm')


def test_bad_arguments():
    with pytest.raises(ValueError, match='unknown src'):
        convert(_unilm_classifier(), 'deit')
    with pytest.raises(ValueError, match='unknown kind'):
        convert(_unilm_classifier(), 'unilm', kind='detector')
    with pytest.raises(ValueError, match='empty'):
        convert({}, 'unilm')


def test_detect_kind_priority():
    assert detect_kind([]) == 'backbone'
    assert detect_kind(['backbone', 'cls_head']) == 'classifier'
    assert detect_kind(['backbone', 'lm_head']) == 'pretrain'
    assert detect_kind(['backbone', 'aggregation']) == 'pretrain'
    assert detect_kind(['backbone', 'seg_head', 'seg_neck']) == 'segmentor'


def test_nonzero_k_bias_buffer_is_an_error():
    sd = _unilm_classifier()
    sd['blocks.0.attn.k_bias'] = torch.zeros(D)
    _, report = convert(sd, 'timm')
    assert 'no key bias' in report.dropped['blocks.0.attn.k_bias']
    sd['blocks.0.attn.k_bias'] = torch.ones(D)
    with pytest.raises(ValueError, match='no key bias'):
        convert(sd, 'timm')
