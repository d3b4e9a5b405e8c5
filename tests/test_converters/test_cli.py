"""tools/model_converters/convert_checkpoint.py: as a subprocess for the main paths, and
in-process (its ``main``) for the rest to keep the tests fast."""
import argparse
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch
from _helpers import ROOT, tool_main

TOOL = osp.join(ROOT, 'tools', 'model_converters', 'convert_checkpoint.py')
D = 8


def _run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def _main(*args):
    return tool_main(TOOL, *args)


def _unilm_pretrain():
    sd = {
        'cls_token': torch.randn(1, 1, D), 'mask_token': torch.randn(1, 1, D),
        'patch_embed.proj.weight': torch.randn(D, 3, 4, 4),
        'patch_embed.proj.bias': torch.randn(D),
        'rel_pos_bias.relative_position_bias_table': torch.randn(12, 2),
        'rel_pos_bias.relative_position_index': torch.zeros(5, 5, dtype=torch.long),
        'blocks.0.norm1.weight': torch.randn(D), 'blocks.0.norm1.bias': torch.randn(D),
        'blocks.0.attn.qkv.weight': torch.randn(3 * D, D),
        'blocks.0.attn.q_bias': torch.randn(D), 'blocks.0.attn.v_bias': torch.randn(D),
        'blocks.0.attn.proj.weight': torch.randn(D, D), 'blocks.0.attn.proj.bias': torch.randn(D),
        'blocks.0.norm2.weight': torch.randn(D), 'blocks.0.norm2.bias': torch.randn(D),
        'blocks.0.mlp.fc1.weight': torch.randn(2 * D, D),
        'blocks.0.mlp.fc1.bias': torch.randn(2 * D),
        'blocks.0.mlp.fc2.weight': torch.randn(D, 2 * D), 'blocks.0.mlp.fc2.bias': torch.randn(D),
        'blocks.0.gamma_1': torch.randn(D), 'blocks.0.gamma_2': torch.randn(D),
        'norm.weight': torch.randn(D), 'norm.bias': torch.randn(D),
        'lm_head.weight': torch.randn(16, D), 'lm_head.bias': torch.randn(16),
    }
    return sd


def test_cli_converts_end_to_end(tmp_path, capsys):
    sd = _unilm_pretrain()
    src = tmp_path / 'beit_pt.pth'
    torch.save({'model': sd, 'epoch': 799}, src)
    dst = tmp_path / 'out' / 'converted.pth'
    res = _run(str(src), str(dst), '--src', 'unilm')
    assert res.returncode == 0, res.stderr
    assert 'pretrain' in res.stdout and 'rel_pos_bias.relative_position_index' in res.stdout
    assert not osp.exists(str(dst) + '.tmp')
    ckpt = torch.load(dst, map_location='cpu', weights_only=True)
    assert ckpt['meta']['converted_from'] == 'unilm'
    assert ckpt['meta']['kind'] == 'pretrain'
    assert ckpt['meta']['source_file'] == 'beit_pt.pth'
    out = ckpt['state_dict']
    assert torch.equal(out['head.lm_head.weight'], sd['lm_head.weight'])
    assert torch.equal(out['backbone.rel_pos_bias.relative_position_bias_table'],
                       sd['rel_pos_bias.relative_position_bias_table'])
    assert len(out) == len(sd) - 1

    # --kind backbone drops the MIM head, with the reason printed
    dst2 = tmp_path / 'backbone.pth'
    assert _main(src, dst2, '--src', 'timm', '--kind', 'backbone') == ''
    assert 'lm_head.weight: MIM head' in capsys.readouterr().out
    out2 = torch.load(dst2, weights_only=True)['state_dict']
    assert 'lm_head.weight' not in out2 and 'mask_token' in out2


def test_cli_refuses_to_overwrite(tmp_path):
    src = tmp_path / 'in.pth'
    torch.save(_unilm_pretrain(), src)
    dst = tmp_path / 'out.pth'
    dst.write_bytes(b'keep me')
    res = _run(str(src), str(dst), '--src', 'unilm')
    assert res.returncode != 0
    assert 'exists' in res.stderr and '--force' in res.stderr
    assert dst.read_bytes() == b'keep me'
    assert _main(src, dst, '--src', 'unilm', '--force') == ''
    assert 'head.lm_head.bias' in torch.load(dst, weights_only=True)['state_dict']


def test_cli_unknown_key_fails_without_writing(tmp_path):
    sd = _unilm_pretrain()
    sd['blocks.0.attn.surprise'] = torch.zeros(1)
    src = tmp_path / 'in.pth'
    torch.save(sd, src)
    dst = tmp_path / 'out.pth'
    msg = _main(src, dst, '--src', 'unilm')
    assert 'blocks.0.attn.surprise' in msg and 'in.pth' in msg
    assert not dst.exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_cli_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / 'pwned'
    src = tmp_path / 'evil_torch.pth'
    torch.save({'model': _Payload(marker)}, src)
    assert not marker.exists()
    res = _run(str(src), str(tmp_path / 'out.pth'), '--src', 'unilm')
    assert res.returncode != 0
    assert 'evil_torch.pth' in res.stderr and 'refusing to load' in res.stderr
    assert not marker.exists(), 'the pickle payload ran'
    assert not (tmp_path / 'out.pth').exists()
    # a plain (non-zip) pickle is refused the same way
    src = tmp_path / 'evil_plain.pkl'
    src.write_bytes(pickle.dumps({'model': _Payload(marker)}))
    msg = _main(src, tmp_path / 'out.pth', '--src', 'unilm')
    assert 'evil_plain.pkl' in msg and 'refusing to load' in msg
    assert not marker.exists(), 'the pickle payload ran'


def test_cli_accepts_unilm_training_checkpoint_with_args(tmp_path):
    """unilm's save_model stores an argparse.Namespace under 'args': allowed."""
    src = tmp_path / 'checkpoint-799.pth'
    torch.save({'model': _unilm_pretrain(), 'args': argparse.Namespace(lr=1.5e-3),
                'epoch': 799}, src)
    assert _main(src, tmp_path / 'o.pth', '--src', 'unilm', '--kind', 'backbone') == ''
    assert 'mask_token' in torch.load(tmp_path / 'o.pth', weights_only=True)['state_dict']


def test_cli_missing_input(tmp_path):
    msg = _main(tmp_path / 'nope.pth', tmp_path / 'o.pth', '--src', 'hf')
    assert 'nope.pth' in msg and 'does not exist' in msg


def test_cli_safetensors(tmp_path):
    try:
        from safetensors.torch import save_file
    except ImportError:
        pytest.skip('safetensors not installed')
    sd = {k: v.contiguous() for k, v in _unilm_pretrain().items()}
    src = tmp_path / 'model.safetensors'
    save_file(sd, str(src))
    assert _main(src, tmp_path / 'o.pth', '--src', 'unilm') == ''
    out = torch.load(tmp_path / 'o.pth', weights_only=True)['state_dict']
    assert torch.equal(out['backbone.norm.weight'], sd['norm.weight'])
