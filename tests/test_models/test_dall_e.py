"""Tests for mmbeit/models/tokenizers/dall_e.py (unilm dall_e: DALL-E dVAE, the BEiT v1 target).

Independent references: mmpretrain's ``DALLEEncoder`` (mmpretrain.models.selfsup.cae,
registered there as 'DALL-E') for the encoder's numbers and key layout. OpenAI's pickled
files are converted by tools/model_converters/dalle_to_state_dict.py (its tests, and those
of the restricted reader, are tests/test_tools/test_dalle_converter.py and
tests/test_checkpoint/test_pickled_modules.py); here they are only refused.
"""
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _fake_dall_e import FORMATS, TINY_DEC, TINY_ENC, write_openai_files

from mmbeit.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
)
from mmbeit.models.tokenizers.dall_e import (
    DALLEBlock,
    DALLEConv,
    DALLEDecoder,
    DALLEEncoder,
    DALLETokenizer,
    load_dalle_weights,
    map_pixels,
    unmap_pixels,
)
from mmbeit.registry import MODELS

# One intra-op thread (tests/conftest.py): tiny ops run faster so, also on a busy machine.
pytestmark = pytest.mark.usefixtures('one_thread')


# --------------------------------------------------------------------------- weight files


@pytest.fixture(scope='module')
def openai_files(tmp_path_factory):
    return write_openai_files(tmp_path_factory.mktemp('openai'))


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('part', ['encoder', 'decoder'])
def test_pickled_module_file_names_the_converter(openai_files, tmp_path, fmt, part):
    """OpenAI's .pkl given to the tokenizer: refused (weights-only), with the command."""
    path = tmp_path / f'{part}.pkl'
    path.write_bytes(openai_files['files'][fmt, part].read_bytes())
    kwargs = dict(with_decoder=True, decoder=TINY_DEC) if part == 'decoder' else {}
    tok = DALLETokenizer(encoder=TINY_ENC, **kwargs, **{f'{part}_checkpoint': str(path)})
    with pytest.raises(UnsafeCheckpointError) as info:
        tok.init_weights()
    msg = str(info.value)
    command = (f'python tools/model_converters/dalle_to_state_dict.py {path} '
               f'{tmp_path / f"dalle_{part}.pth"}')
    assert f'`{command}`' in msg
    assert f'DALL-E {part} weights {str(path)!r} are not a plain weights file' in msg
    if fmt != 'legacy_p1':  # torch stops at a protocol-1 opcode before any global
        assert f'(The file names dall_e.{part}.{part.capitalize()}.)' in msg
    assert 'dall_e' not in sys.modules


# --------------------------------------------------------------------------- mmpretrain


def _mmpretrain_encoder(**kwargs):
    from mmpretrain.models.selfsup.cae import DALLEEncoder as RefEncoder
    return RefEncoder(**kwargs).eval()


@pytest.mark.parametrize('n_blk', [1, 2])
def test_tokens_match_mmpretrain_tiny(n_blk):
    """Reference: mmpretrain's DALLEEncoder (same random weights, 4 groups, tiny widths)."""
    torch.manual_seed(n_blk)
    ref = _mmpretrain_encoder(n_hid=8, n_blk_per_group=n_blk, vocab_size=64)
    for p in ref.parameters():  # its biases start at 0; make them count
        p.data.add_(0.05 * torch.randn_like(p))
    tok = DALLETokenizer(encoder=dict(n_hid=8, n_blk_per_group=n_blk, vocab_size=64),
                         input_size=32)
    tok.encoder.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = ref(0.8 * x + 0.1)
    logits = tok.logits(x)
    assert logits.shape == (3, 64, 4, 4)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(tok.tokenize(x), expected.argmax(1).flatten(1))


@pytest.mark.parametrize('layout', ['bare', 'state_dict', 'module_prefix', 'encoder_prefix',
                                    'target_generator', 'model_with_others'])
def test_mmpretrain_layout_files_load(tmp_path, layout):
    ref = _mmpretrain_encoder(n_hid=8, n_blk_per_group=1, vocab_size=32)
    sd = ref.state_dict()
    if layout == 'bare':
        obj = sd
    elif layout == 'state_dict':
        obj = {'meta': {'epoch': 3}, 'state_dict': sd}
    elif layout == 'module_prefix':
        obj = {'state_dict': {f'module.{k}': v for k, v in sd.items()}}
    elif layout == 'encoder_prefix':
        obj = {f'encoder.{k}': v for k, v in sd.items()}
    elif layout == 'target_generator':
        obj = {'state_dict': {f'target_generator.{k}': v for k, v in sd.items()}}
    else:  # an mmpretrain BEiT checkpoint: backbone keys beside target_generator.*
        obj = {'state_dict': {'backbone.cls_token': torch.zeros(1, 1, 8),
                              **{f'target_generator.{k}': v for k, v in sd.items()}}}
    path = tmp_path / 'dalle_encoder.pth'
    torch.save(obj, path)
    loaded = load_dalle_weights(str(path), 'encoder')
    assert set(loaded) == set(sd)
    tok = MODELS.build(dict(type='DALLETokenizer', encoder=dict(TINY_ENC),
                            encoder_checkpoint=str(path), input_size=16))
    tok.init_weights()
    for key, value in sd.items():
        assert torch.equal(tok.encoder.state_dict()[key], value)


def test_full_size_matches_mmpretrain():
    """Reference: mmpretrain's DALL-E at OpenAI's size (random weights), batch 1, 112 px.

    Our state dict has exactly its keys and shapes; logits and token ids agree.
    """
    torch.manual_seed(0)
    ref = _mmpretrain_encoder()
    tok = DALLETokenizer().freeze()
    ref_sd = ref.state_dict()
    ours = tok.encoder.state_dict()
    assert list(ours) == list(ref_sd)
    assert all(ours[k].shape == ref_sd[k].shape for k in ours)
    tok.encoder.load_state_dict(ref_sd, strict=True)
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        expected = ref(0.8 * x + 0.1)
    logits = tok.logits(x)
    assert logits.shape == (1, 8192, 14, 14)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    ids = tok.tokenize(x)
    assert ids.shape == (1, 196) and ids.dtype == torch.long
    assert torch.equal(ids, expected.argmax(1).flatten(1))


# --------------------------------------------------------------------------- hand checks


def test_pixel_maps_by_hand():
    x = torch.tensor([0., 0.25, 0.5, 1.])
    torch.testing.assert_close(map_pixels(x), torch.tensor([0.1, 0.3, 0.5, 0.9]))
    y = torch.tensor([0., 0.1, 0.5, 0.9, 1.])
    torch.testing.assert_close(unmap_pixels(y), torch.tensor([0., 0., 0.5, 1., 1.]))
    torch.testing.assert_close(unmap_pixels(map_pixels(x)), x)


def test_block_by_hand():
    with torch.device('meta'):
        enc = DALLEEncoder()  # OpenAI size: 4 groups x 2 blocks -> 1/64
    assert enc.blocks.group_1.block_1.post_gain == 1 / 64
    assert DALLEBlock(4, 4, n_layers=2).post_gain == 0.25
    same, wider = DALLEBlock(8, 8, 2), DALLEBlock(8, 16, 2, kind='decoder')
    assert isinstance(same.id_path, nn.Identity)
    assert isinstance(wider.id_path, DALLEConv) and wider.id_path.w.shape == (16, 8, 1, 1)
    kernels = [m.w.shape[-1] for m in same.res_path if isinstance(m, DALLEConv)]
    assert kernels == [3, 3, 3, 1]
    kernels = [m.w.shape[-1] for m in wider.res_path if isinstance(m, DALLEConv)]
    assert kernels == [1, 3, 3, 3]
    assert [m.w.shape[0] for m in wider.res_path if isinstance(m, DALLEConv)] == [4, 4, 4, 16]
    # forward = id_path(x) + res_path(x) / n_layers**2, spelled out
    x = torch.randn(2, 8, 5, 5)
    h = x
    for i in range(1, 5):
        conv = getattr(wider.res_path, f'conv_{i}')
        h = F.conv2d(F.relu(h), conv.w, conv.b, padding=conv.w.shape[-1] // 2)
    expected = F.conv2d(x, wider.id_path.w, wider.id_path.b) + 0.25 * h
    torch.testing.assert_close(wider(x), expected)
    torch.testing.assert_close(same(x), x + 0.25 * same.res_path(x))


def _expected_keys(widths, first_width):
    keys = ['blocks.input.w', 'blocks.input.b']
    for g, width in enumerate(widths, 1):
        for k in (1, 2):
            n_in = (first_width if g == 1 else widths[g - 2]) if k == 1 else width
            if n_in != width:
                keys += [f'blocks.group_{g}.block_{k}.id_path.{p}' for p in 'wb']
            keys += [f'blocks.group_{g}.block_{k}.res_path.conv_{c}.{p}'
                     for c in range(1, 5) for p in 'wb']
    return keys + ['blocks.output.conv.w', 'blocks.output.conv.b']


def test_full_size_layouts_by_hand():
    with torch.device('meta'):
        enc, dec = DALLEEncoder(), DALLEDecoder()
    esd, dsd = enc.state_dict(), dec.state_dict()
    assert list(esd) == _expected_keys([256, 512, 1024, 2048], 256)
    assert [k for k in esd if 'id_path' in k] == [
        f'blocks.group_{g}.block_1.id_path.{p}' for g in (2, 3, 4) for p in 'wb']
    assert esd['blocks.input.w'].shape == (256, 3, 7, 7)
    assert esd['blocks.group_1.block_1.res_path.conv_1.w'].shape == (64, 256, 3, 3)
    assert esd['blocks.group_4.block_1.id_path.w'].shape == (2048, 1024, 1, 1)
    assert esd['blocks.group_4.block_2.res_path.conv_4.w'].shape == (2048, 512, 1, 1)
    assert esd['blocks.output.conv.w'].shape == (8192, 2048, 1, 1)
    assert list(dsd) == _expected_keys([2048, 1024, 512, 256], 128)
    assert dsd['blocks.input.w'].shape == (128, 8192, 1, 1)
    assert dsd['blocks.group_1.block_1.id_path.w'].shape == (2048, 128, 1, 1)
    assert dsd['blocks.group_1.block_1.res_path.conv_1.w'].shape == (512, 128, 1, 1)
    assert dsd['blocks.group_4.block_1.res_path.conv_4.w'].shape == (256, 64, 3, 3)
    assert dsd['blocks.output.conv.w'].shape == (6, 256, 1, 1)
    assert isinstance(enc.blocks.group_3.pool, nn.MaxPool2d)
    assert not hasattr(enc.blocks.group_4, 'pool')
    assert isinstance(dec.blocks.group_3.upsample, nn.Upsample)
    assert not hasattr(dec.blocks.group_4, 'upsample')


def test_grid_and_token_shape_at_112():
    tok = DALLETokenizer(encoder=TINY_ENC)
    assert tok.input_size == 112 and tok.grid == (14, 14) and tok.vocab_size == 32
    ids = tok.tokenize(torch.rand(2, 3, 112, 112))
    assert ids.shape == (2, 196) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < 32
    assert tok.logits(torch.rand(1, 3, 112, 112)).shape == (1, 32, 14, 14)


def test_tokens_row_major():
    tok = DALLETokenizer(encoder=TINY_ENC, input_size=32)
    x = torch.rand(1, 3, 32, 32)
    logits = tok.logits(x)  # [1, 32, 4, 4]
    ids = tok.tokenize(x)
    assert ids[0, 1 * 4 + 2] == logits[0, :, 1, 2].argmax()
    assert ids[0, 3 * 4 + 0] == logits[0, :, 3, 0].argmax()


def test_autocast_does_not_change_tokens():
    tok = DALLETokenizer(encoder=TINY_ENC, input_size=32)
    x = torch.rand(2, 3, 32, 32)
    plain = tok.logits(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        inside = tok.logits(x.bfloat16())
        ids = tok.tokenize(x)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, tok.logits(x.bfloat16().float()))
    assert torch.equal(ids, plain.argmax(1).flatten(1))


def test_input_checks():
    tok = DALLETokenizer(encoder=TINY_ENC)
    with pytest.raises(ValueError, match=r'\[B, 3, 112, 112\].*got \(1, 3, 224, 224\)'):
        tok.tokenize(torch.rand(1, 3, 224, 224))
    with pytest.raises(ValueError, match='112'):
        tok.tokenize(torch.rand(3, 112, 112))
    with pytest.raises(ValueError, match=r'in \[0, 1\].*got values'):
        tok.tokenize(torch.rand(1, 3, 112, 112) * 255)
    with pytest.raises(ValueError, match='float'):
        tok.tokenize(torch.zeros(1, 3, 112, 112, dtype=torch.uint8))
    unchecked = DALLETokenizer(encoder=TINY_ENC, check_input_range=False)
    assert unchecked.tokenize(torch.rand(1, 3, 112, 112) * 2 - 1).shape == (1, 196)
    with pytest.raises(ValueError, match='multiple of 8'):
        DALLETokenizer(encoder=TINY_ENC, input_size=100)


def test_decode_needs_decoder():
    tok = DALLETokenizer(encoder=TINY_ENC)
    with pytest.raises(RuntimeError, match='with_decoder=True'):
        tok.decode(torch.zeros(1, 196, dtype=torch.long))
    with pytest.raises(ValueError, match='with_decoder'):
        DALLETokenizer(encoder=TINY_ENC, decoder_checkpoint='dalle_decoder.pth')


def test_freeze_keeps_eval():
    tok = DALLETokenizer(encoder=TINY_ENC, with_decoder=True, decoder=TINY_DEC)
    tok.train()
    assert tok.training
    assert tok.freeze() is tok
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())
    assert tok.train() is tok
    assert not tok.training and not any(m.training for m in tok.modules())
    container = nn.ModuleDict(dict(target_generator=tok, head=nn.Linear(2, 2)))
    container.train()
    assert container.head.training and not tok.training


def test_decode_by_hand():
    torch.manual_seed(0)
    tok = DALLETokenizer(encoder=TINY_ENC, with_decoder=True, decoder=TINY_DEC,
                         input_size=32).freeze()
    for p in tok.decoder.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, 32, (2, 16))
    rec = tok.decode(ids)
    assert rec.shape == (2, 3, 32, 32)
    assert float(rec.min()) >= 0 and float(rec.max()) <= 1
    # The 1x1 input conv of a one-hot map picks the token's column of w (plus b).
    one_hot = F.one_hot(ids.view(2, 4, 4), 32).permute(0, 3, 1, 2).float()
    conv = tok.decoder.blocks.input
    picked = conv.w[:, :, 0, 0].t()[ids.view(2, 4, 4)].permute(0, 3, 1, 2) + conv.b.view(
        1, -1, 1, 1)
    torch.testing.assert_close(conv(one_hot), picked)
    with torch.no_grad():
        stats = tok.decoder(one_hot)
    torch.testing.assert_close(rec, ((torch.sigmoid(stats[:, :3]) - 0.1) / 0.8).clamp(0, 1))
    # N = 4 tokens: a 2x2 grid, not the 4x4 one of input_size 32.
    assert tok.decode(ids[:, :4]).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match='grid'):
        tok.decode(ids[:, :5])
    with pytest.raises(ValueError, match=r'\[0, 32\)'):
        tok.decode(torch.full((1, 16), 32))


def test_missing_and_unexpected_keys_named(tmp_path):
    sd = DALLEEncoder(**TINY_ENC).state_dict()
    del sd['blocks.output.conv.b']
    sd['blocks.group_9.block_1.res_path.conv_1.w'] = torch.zeros(1)
    path = tmp_path / 'enc.pth'
    torch.save(sd, path)
    tok = DALLETokenizer(encoder=TINY_ENC, encoder_checkpoint=str(path))
    with pytest.raises(CheckpointMismatchError) as info:
        tok.init_weights()
    msg = str(info.value)
    assert msg.startswith(f'DALL-E encoder weights {str(path)!r} does not fit DALLEEncoder('
                          'n_hid=8, n_blk_per_group=1, group_count=4, input_channels=3, '
                          'vocab_size=32):')
    assert '1 missing (in the model, not in the file): [blocks.output.conv.b]' in msg
    assert ('1 unexpected (in the file, not in the model): '
            '[blocks.group_9.block_1.res_path.conv_1.w]') in msg
    assert info.value.report.missing == ['blocks.output.conv.b']


def test_shape_mismatch_named(tmp_path):
    path = tmp_path / 'enc.pth'
    torch.save(DALLEEncoder(n_hid=8, n_blk_per_group=1, vocab_size=64).state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_dalle_weights(str(path), 'encoder', module=DALLEEncoder(**TINY_ENC))
    assert info.value.report.mismatched == [
        ('blocks.output.conv.w', (64, 64, 1, 1), (32, 64, 1, 1)),
        ('blocks.output.conv.b', (64, ), (32, ))]
    assert 'blocks.output.conv.w [64, 64, 1, 1] in the file, [32, 64, 1, 1] in the model' \
        in str(info.value)


def test_plain_file_loads_exactly(tmp_path):
    """A converted (plain) file: every tensor placed, nothing else reported."""
    torch.manual_seed(3)
    src = DALLEEncoder(**TINY_ENC)
    path = tmp_path / 'enc.pth'
    torch.save(src.state_dict(), path)
    dst = DALLEEncoder(**TINY_ENC)
    sd = load_dalle_weights(str(path), 'encoder', module=dst)
    assert list(sd) == list(src.state_dict())
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())


def test_not_a_state_dict(tmp_path):
    path = tmp_path / 'enc.pth'
    torch.save({'blocks.input.w': torch.zeros(1), 'blocks.note': 'text'}, path)
    with pytest.raises(CheckpointError, match=r'enc.pth.*entries \[blocks.note\] are not '
                                              r'tensors'):
        load_dalle_weights(str(path), 'encoder')
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match=r"enc.pth': expected a state dict or a "
                                              r"checkpoint dict, got list"):
        load_dalle_weights(str(path), 'encoder')
    with pytest.raises(CheckpointNotFoundError, match='nope.pkl'):
        load_dalle_weights(str(tmp_path / 'nope.pkl'), 'encoder')
    with pytest.raises(ValueError, match="part must be 'encoder' or 'decoder', got "
                                         "'quantizer'"):
        load_dalle_weights(str(path), 'quantizer')
