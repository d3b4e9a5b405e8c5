"""tools/analysis_tools/visualize_mim.py: one picture per image (a real photo of odd size,
a folder of demo images) from a tiny random BEiT v2 demo model and a BEiT v1 model with
the fake DALL-E dVAE (reconstruction panels); the accuracies it reports equal
``mim_panels`` run here on the same model; the errors of a classifier config, an image
that cannot be read, a missing image and an existing picture.

The v2 run goes through a fresh process (``run_tool``); the DALL-E run and the errors
(which come before any model is built) through ``tool_main`` in this process."""
import json
import os

import numpy as np
import pytest
import torch
from _fake_dall_e import TINY_DEC, TINY_ENC, write_openai_files
from _helpers import ROOT, run_tool, tool_main
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

from mmbeit.checkpoint import save_checkpoint

TOOL = f'{ROOT}/tools/analysis_tools/visualize_mim.py'
DEMO_V2 = f'{ROOT}/configs/demo/beitv2_vit-tiny-p8_vqkd-demo_30e_demo-64.py'
DEMO_CLS = f'{ROOT}/configs/demo/beit_vit-tiny-p8_scratch-30e_demo-64.py'

pytestmark = pytest.mark.usefixtures('one_thread')

V1_CONFIG = '''
default_scope = 'mmbeit'
train_pipeline = [
    dict(type='mmbeit.LoadImageRGB', lazy=True),
    dict(type='mmbeit.BEiTMaskedViews', img_size=64, target_size=64,
         target_interpolation='lanczos', scale=(0.08, 1.0)),
    dict(type='mmbeit.MIMMask', patch_size=8,
         generator=dict(type='BlockwiseMaskGenerator', mask_ratio=0.4, min_num_patches=4,
                        exact=False)),
    dict(type='mmbeit.PackMIMInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(
    type='UnlabeledImageFolder', data_root='unused', pipeline=train_pipeline))
model = dict(
    type='BEiT',
    data_preprocessor=dict(type='MIMDataPreprocessor', patch_size=8),
    backbone=dict(type='BEiTViT', arch=dict(embed_dims=32, num_layers=2, num_heads=4,
                                            feedforward_channels=64),
                  img_size=64, patch_size=8, use_mask_token=True, final_norm=True,
                  rel_pos_bias='shared', out_type='raw'),
    head=dict(type='MIMHead', in_channels=32, vocab_size=32),
    target_generator=dict(type='DALLETokenizer', encoder={enc}, decoder={dec},
                          with_decoder=True, input_size=64, encoder_checkpoint='{enc_file}',
                          decoder_checkpoint='{dec_file}'))
'''


def build(cfg):
    import mmbeit.models  # noqa: F401
    from mmbeit.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmbeit'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
    return model.eval()


def photo_file(path):
    """scikit-image's cat (451 x 300), as a JPEG."""
    from skimage.data import chelsea
    Image.fromarray(chelsea()).save(path, quality=90)
    return path


def summary(out):
    return json.loads((out / 'summary.json').read_text())


@pytest.mark.slow
def test_v2_demo_model_photo_and_folder(tmp_path, demo_data):
    """The demo BEiT v2 config, a checkpoint of the built model, its VQ-KD tokenizer's own
    file: a photo and a folder of demo images give one PNG each, with the accuracies
    that mim_panels computes here."""
    from mmbeit.datasets.transforms import LoadImageRGB
    from mmbeit.visualization import build_pretraining_steps, mim_panels
    cfg = Config.fromfile(DEMO_V2)
    small = {'model.head.vocab_size': 8, 'model.target_generator.quantizer.num_tokens': 8}
    cfg.merge_from_dict(small)  # 8 codes instead of 512: a random head gets some right
    model = build(cfg)
    with torch.no_grad():  # a head whose argmax varies
        model.head.lm_head.weight.normal_(0, 1)
    ckpt, tok = tmp_path / 'pretrain.pth', tmp_path / 'tokenizer.pth'
    save_checkpoint(dict(state_dict=model.state_dict()), ckpt)
    save_checkpoint(dict(state_dict=model.target_generator.state_dict()), tok)
    assert not any(k.startswith('target_generator.') for k in model.state_dict())

    photo = photo_file(tmp_path / 'chelsea.jpg')
    folder = demo_data / 'imagenet' / 'val' / sorted(os.listdir(demo_data / 'imagenet' / 'val'))[0]
    out = tmp_path / 'vis'
    run_tool([TOOL, DEMO_V2, ckpt, photo, folder, '--out', out, '--seed', '3',
              '--layers', '0', '-1', '--heads', '1', '3',
              '--cfg-options', f'model.target_generator.checkpoint={tok}',
              *[f'{k}={v}' for k, v in small.items()]])

    rels = sorted(os.listdir(folder))
    expected = [(str(photo), out / 'chelsea.png')] + [
        (str(folder / r), out / (os.path.splitext(r)[0] + '.png')) for r in rels]
    result = summary(out)
    assert [(r['image'], r['picture']) for r in result['images']] == [
        (i, str(p)) for i, p in expected]
    views, generator, _ = build_pretraining_steps(cfg)
    for (image, picture), row in zip(expected, result['images']):
        with Image.open(picture) as im:
            assert im.format == 'PNG' and im.size == (1340, 630)
        rgb = LoadImageRGB().load(image)
        assert row['size'] == [rgb.shape[1], rgb.shape[0]]
        panels = mim_panels(model, rgb, generator, views=views, seed=3, layers=(0, -1),
                            heads=(1, 3))
        assert (row['num_masked'], row['right'], row['accuracy']) == (
            panels['num_masked'], int(panels['correct'].sum()), panels['accuracy'])
        assert row['panels'] == ['view', 'mask', 'masked_view', 'target_tokens',
                                 'pred_tokens', 'attention_block1', 'attention_block4']
    assert result['images'][0]['size'] == [451, 300]
    assert sum(r['right'] for r in result['images']) > 0   # the comparison bites
    assert result['mean_accuracy'] == pytest.approx(
        np.mean([r['accuracy'] for r in result['images']]))


def test_v1_dalle_reconstruction_panels(tmp_path, demo_data):
    """BEiT v1 with the fake DALL-E dVAE (OpenAI's layout, encoder and decoder files): the
    picture has the decoder's two reconstructions. Run in this process (the v2 test runs
    the command in a fresh one), which saves the imports of a second process."""
    state = write_openai_files(tmp_path / 'openai')['state']
    enc, dec = tmp_path / 'dalle_encoder.pth', tmp_path / 'dalle_decoder.pth'
    save_checkpoint(state['encoder'], enc)
    save_checkpoint(state['decoder'], dec)
    config = tmp_path / 'beit_v1_tiny.py'
    config.write_text(V1_CONFIG.format(enc=TINY_ENC, dec=TINY_DEC, enc_file=enc,
                                       dec_file=dec))
    model = build(Config.fromfile(config))
    ckpt = tmp_path / 'pretrain.pth'
    save_checkpoint(dict(state_dict=model.state_dict()), ckpt)
    image = next((demo_data / 'ade20k' / 'images' / 'validation').iterdir())
    out = tmp_path / 'vis'
    assert tool_main(TOOL, config, ckpt, image, '--out', out) == ''
    (row, ) = summary(out)['images']
    assert row['picture'] == str(out / (image.stem + '.png'))
    assert row['panels'] == ['view', 'mask', 'masked_view', 'target_tokens', 'pred_tokens',
                             'recon_target', 'recon_pred', 'attention_block2']
    with Image.open(row['picture']) as im:
        assert im.format == 'PNG' and im.size == (1340, 630)


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_config_and_the_image(tmp_path):
    ckpt = tmp_path / 'pretrain.pth'
    ckpt.write_bytes(b'unused: every error comes before the model is built')
    good = tmp_path / 'good.png'
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(good)
    out = tmp_path / 'vis'

    msg = tool_main(TOOL, DEMO_CLS, ckpt, good, '--out', out)
    assert msg == (f"visualize_mim.py: config {DEMO_CLS!r} builds "
                   "model.type='ImageClassifier', not a pretraining model "
                   "(model.type='BEiT'): give the BEiT / BEiT v2 pretraining config the "
                   'checkpoint was trained with (configs/beit/, configs/beitv2/, '
                   'configs/demo/beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py); a '
                   'fine-tuned model runs with tools/infer.py')

    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'not an image at all')
    msg = tool_main(TOOL, DEMO_V2, ckpt, good, bad, '--out', out)
    assert msg == f'visualize_mim.py: cannot read image {bad}: cannot identify the image format'

    missing = tmp_path / 'nope.jpg'
    msg = tool_main(TOOL, DEMO_V2, ckpt, missing, '--out', out)
    assert msg == (f"visualize_mim.py: image {str(missing)!r} does not exist (give image "
                   'files or folders)')

    empty = tmp_path / 'empty'
    empty.mkdir()
    msg = tool_main(TOOL, DEMO_V2, ckpt, empty, '--out', out)
    assert msg.startswith(f"visualize_mim.py: no images (.jpg .jpeg .png .webp .bmp) under "
                          f"the folder {str(empty)!r}")

    out.mkdir()
    (out / 'good.png').write_bytes(b'an earlier picture')
    msg = tool_main(TOOL, DEMO_V2, ckpt, good, '--out', out)
    assert msg == (f"visualize_mim.py: {str(out / 'good.png')!r} already exists; pass "
                   '--force to replace, or choose another --out')
    assert (out / 'good.png').read_bytes() == b'an earlier picture'

    other = tmp_path / 'sub'
    other.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / 'good.jpg')
    msg = tool_main(TOOL, DEMO_V2, ckpt, good, other, '--out', tmp_path / 'vis2')
    assert msg == (f"visualize_mim.py: {str(good)!r} and {str(other / 'good.jpg')!r} would "
                   f"both write {str(tmp_path / 'vis2' / 'good.png')!r}; rename one of them "
                   'or run the tool on each separately')
