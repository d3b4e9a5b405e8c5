"""Tests for tools/model_converters/dalle_to_state_dict.py: OpenAI's pickled DALL-E files
(written by the stand-in package of tests/_fake_dall_e.py) and state dicts become plain
state dicts that ``DALLETokenizer`` loads weights-only and tokenizes with exactly as the
pickled modules compute."""
import os
import os.path as osp
import sys

import pytest
import torch
from _fake_dall_e import DALLE_CLASSES, FORMATS, TINY_DEC, TINY_ENC, write_openai_files
from _helpers import ROOT, run_tool, tool_main

from mmbeit.models.tokenizers.dall_e import DALLEDecoder, DALLEEncoder, DALLETokenizer

TOOL = osp.join(ROOT, 'tools', 'model_converters', 'dalle_to_state_dict.py')

pytestmark = pytest.mark.usefixtures('one_thread')


def convert(*args):
    """The tool's exit message ('' on success)."""
    return tool_main(TOOL, *args)


def load_plain(path):
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def openai_files(tmp_path_factory):
    return write_openai_files(tmp_path_factory.mktemp('openai'))


@pytest.mark.parametrize('fmt', FORMATS)
def test_converted_files_tokenize_as_the_pickled_modules(openai_files, tmp_path, fmt):
    """Converted once, the files load into DALLETokenizer (weights-only, strict) and give
    the pickled modules' own logits, tokens and reconstructions, bit for bit."""
    files, ref, state = openai_files['files'], openai_files['ref'], openai_files['state']
    out = {}
    for part in ('encoder', 'decoder'):
        out[part] = tmp_path / f'dalle_{part}.pth'
        assert convert(files[fmt, part], out[part]) == ''
        saved = load_plain(out[part])  # a plain state dict: weights-only reads it
        assert list(saved) == list(state[part])
        assert all(torch.equal(saved[k], v) and not saved[k].requires_grad
                   for k, v in state[part].items())
    tok = DALLETokenizer(encoder=TINY_ENC, with_decoder=True, decoder=TINY_DEC,
                         encoder_checkpoint=str(out['encoder']),
                         decoder_checkpoint=str(out['decoder']), input_size=16)
    tok.init_weights()
    tok.freeze()
    torch.testing.assert_close(tok.logits(ref['x']), ref['logits'], rtol=0, atol=0)
    assert torch.equal(tok.tokenize(ref['x']), ref['logits'].argmax(1).flatten(1))
    rec = tok.decode(ref['ids'])
    expected = torch.clamp((torch.sigmoid(ref['dec_out'][:, :3]) - 0.1) / 0.8, 0, 1)
    torch.testing.assert_close(rec, expected, rtol=0, atol=0)
    assert 'dall_e' not in sys.modules


def test_cli_prints_part_and_sizes(openai_files, tmp_path):
    """Run as a script (not installed, from any folder): part and sizes are found."""
    dst = tmp_path / 'dec.pth'
    proc = run_tool([TOOL, openai_files['files']['legacy', 'decoder'], dst], cwd=tmp_path)
    assert 'saved the DALL-E decoder (' in proc.stdout
    assert ('sizes: n_init=8, n_hid=8, n_blk_per_group=1, group_count=4, output_channels=3, '
            'vocab_size=32\n') in proc.stdout
    # what differs from OpenAI's model, to put in the config
    assert 'decoder=dict(n_init=8, n_hid=8, n_blk_per_group=1, vocab_size=32)' in proc.stdout
    assert set(load_plain(dst)) == set(openai_files['state']['decoder'])


@pytest.mark.parametrize('fmt', FORMATS)
def test_decoder_file_as_encoder_is_named(openai_files, tmp_path, fmt):
    path, dst = openai_files['files'][fmt, 'decoder'], tmp_path / 'enc.pth'
    msg = convert(path, dst, '--part', 'encoder')
    assert msg == (f"error: {str(path)!r} holds a pickled dall_e.decoder.Decoder, not a "
                   f"dall_e.encoder.Encoder (is it the decoder file? --part decoder)")
    assert not dst.exists()


def test_refuses_to_overwrite_without_force(openai_files, tmp_path):
    src, dst = openai_files['files']['legacy', 'encoder'], tmp_path / 'enc.pth'
    dst.write_bytes(b'keep me')
    assert convert(src, dst) == f"error: {str(dst)!r} exists; pass --force to overwrite it"
    assert dst.read_bytes() == b'keep me'
    assert convert(src, dst, '--force') == ''
    assert set(load_plain(dst)) == set(openai_files['state']['encoder'])
    assert [p for p in os.listdir(tmp_path) if p.endswith('.tmp')] == []  # atomic write


def test_allowlist_is_exactly_the_dall_e_classes():
    from importlib.util import module_from_spec, spec_from_file_location
    spec = spec_from_file_location('dalle_to_state_dict', TOOL)
    tool = module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.DALLE_MODULE_CLASSES == DALLE_CLASSES == (
        'dall_e.encoder.Encoder', 'dall_e.encoder.EncoderBlock', 'dall_e.decoder.Decoder',
        'dall_e.decoder.DecoderBlock', 'dall_e.utils.Conv2d',
        'torch.nn.modules.container.Sequential', 'torch.nn.modules.activation.ReLU',
        'torch.nn.modules.linear.Identity', 'torch.nn.modules.pooling.MaxPool2d',
        'torch.nn.modules.upsampling.Upsample')


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('legacy', [False, True])
def test_crafted_pickle_refused_nothing_written(tmp_path, legacy):
    marker, src, dst = tmp_path / 'pwned', tmp_path / 'encoder.pkl', tmp_path / 'out.pth'
    torch.save({'blocks.input.w': torch.zeros(1), 'x': _SystemCall(marker)}, src,
               _use_new_zipfile_serialization=not legacy)
    msg = convert(src, dst)
    assert msg.startswith(f"error: refusing to read DALL-E weights from {str(src)!r}")
    assert 'GLOBAL posix.system' in msg or 'GLOBAL os.system' in msg
    assert not marker.exists() and not dst.exists()


@pytest.mark.parametrize('layout', ['bare', 'state_dict', 'module_prefix', 'encoder_prefix',
                                    'target_generator', 'decoder_prefix'])
def test_state_dict_layouts(tmp_path, layout):
    """mmpretrain's dalle_encoder.pth and the prefixes DALLETokenizer accepts; the part is
    found from the prefix or the input conv's kernel."""
    part = 'decoder' if layout == 'decoder_prefix' else 'encoder'
    torch.manual_seed(1)
    model = DALLEDecoder(**TINY_DEC, vocab_size=32) if part == 'decoder' else \
        DALLEEncoder(**TINY_ENC)
    sd = model.state_dict()
    obj = {'bare': sd, 'state_dict': {'meta': {'epoch': 3}, 'state_dict': sd},
           'module_prefix': {'state_dict': {f'module.{k}': v for k, v in sd.items()}},
           'encoder_prefix': {f'encoder.{k}': v for k, v in sd.items()},
           'target_generator': {'state_dict': {'backbone.cls_token': torch.zeros(1, 1, 8),
                                               **{f'target_generator.{k}': v
                                                  for k, v in sd.items()}}},
           'decoder_prefix': {f'decoder.{k}': v for k, v in sd.items()}}[layout]
    src, dst = tmp_path / 'in.pth', tmp_path / 'out.pth'
    torch.save(obj, src)
    assert convert(src, dst) == ''
    out = load_plain(dst)
    assert list(out) == list(sd) and all(torch.equal(out[k], v) for k, v in sd.items())


def test_weights_that_do_not_fit_are_named(tmp_path):
    sd = DALLEEncoder(**TINY_ENC).state_dict()
    sd['blocks.group_2.block_1.res_path.conv_2.w'] = torch.zeros(3, 3, 3, 3)
    del sd['blocks.output.conv.b']
    src, dst = tmp_path / 'in.pth', tmp_path / 'out.pth'
    torch.save(sd, src)
    msg = convert(src, dst)
    assert msg.startswith(f"error: {str(src)!r} does not fit DALL-E encoder {{'n_hid': 8, "
                          "'n_blk_per_group': 1, 'group_count': 4, 'input_channels': 3, "
                          "'vocab_size': 32}")
    assert '1 missing (in the model, not in the file): [blocks.output.conv.b]' in msg
    assert ('blocks.group_2.block_1.res_path.conv_2.w [3, 3, 3, 3] in the file, '
            '[4, 4, 3, 3] in the model') in msg
    assert not dst.exists()


def test_not_dall_e_weights(tmp_path):
    src, dst = tmp_path / 'in.pth', tmp_path / 'out.pth'
    torch.save({'conv.weight': torch.zeros(2, 3, 7, 7)}, src)
    assert convert(src, dst) == (f'error: cannot tell whether {str(src)!r} holds the DALL-E '
                                 'encoder or decoder; pass --part encoder or --part decoder')
    assert convert(src, dst, '--part', 'encoder') == (
        f"error: {str(src)!r} is not DALL-E encoder weights: no 4-d ['blocks.input.w', "
        "'blocks.output.conv.w'] (keys found: conv.weight)")
    torch.save({'blocks.input.w': torch.zeros(2), 'note': 'text'}, src)
    assert convert(src, dst).startswith(f"error: {str(src)!r}: not a state dict: entries "
                                        "[note] are not tensors")
    assert "does not exist" in convert(tmp_path / 'nope.pkl', dst)
    assert not dst.exists()
