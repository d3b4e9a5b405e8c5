"""The fast path of the pretraining views: deferred decoding (``LoadImageRGB(lazy=True)``),
scaled-down JPEG decoding when the crop allows, jitter on the crop region, torch resizes.
Its views stay within stated bounds of the exact mode (which equals the torchvision
reference bit for bit, test_pretrain_data.py) and use the same draws of the global RNG."""
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from mmbeit.datasets.transforms import BEiTMaskedViews, LoadImageRGB, mim_views
from mmbeit.datasets.transforms.loading import EncodedImage

V2 = dict(target_size=224, target_interpolation='bicubic', scale=(0.2, 1.0))


def photo(h, w, seed=0):
    """A photo-like RGB image: smooth colour fields, a few hard-edged shapes, grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([128 + 90 * np.sin(6 * x + 2 * c + 3 * y * c) for c in range(3)], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1, 3) * (h, w, min(h, w) / 3)
        inside = (np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2 < r ** 2
        img[inside] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path, array, fmt='JPEG', **kwargs):
    Image.fromarray(array).save(path, fmt, **kwargs)
    return str(path)


def run(path, seed, lazy=True, **kwargs):
    torch.manual_seed(seed)
    results = LoadImageRGB(lazy=lazy)(dict(img_path=path))
    return BEiTMaskedViews(**kwargs)(results)


@pytest.fixture
def decoded_sizes(monkeypatch):
    """Records (reduce asked, size decoded) of every EncodedImage.decode call."""
    calls = []
    original = EncodedImage.decode

    def spy(self, reduce=1):
        img, applied = original(self, reduce)
        calls.append((reduce, applied, img.size))
        return img, applied

    monkeypatch.setattr(EncodedImage, 'decode', spy)
    return calls


# ---------------------------------------------------------------- deferred loading

def test_lazy_load_keeps_bytes_and_header(tmp_path):
    path = save(tmp_path / 'a.jpg', photo(150, 200))
    t = LoadImageRGB(lazy=True)
    out = t(dict(img_path=path))
    assert 'img' not in out and isinstance(out['img_encoded'], EncodedImage)
    enc = out['img_encoded']
    assert out['img_shape'] == out['ori_shape'] == enc.shape == (150, 200)
    assert (enc.width, enc.height, enc.mode, enc.is_jpeg) == (200, 150, 'RGB', True)
    assert enc.data == open(path, 'rb').read()
    assert repr(t) == 'LoadImageRGB(backend_args=None, lazy=True)'
    views = BEiTMaskedViews(img_size=32, target_size=16)(out)
    assert 'img_encoded' not in views and views['img'].shape == (32, 32, 3)
    assert views['ori_shape'] == (150, 200)


def test_lazy_errors_name_the_file(tmp_path):
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'\x00garbage' * 50)
    for lazy in (False, True):
        with pytest.raises(OSError) as err:
            LoadImageRGB(lazy=lazy)(dict(img_path=str(bad)))
        assert str(err.value) == f'cannot decode image {bad}: cannot identify the image format'
        with pytest.raises(FileNotFoundError) as err:
            LoadImageRGB(lazy=lazy)(dict(img_path=str(tmp_path / 'none.jpg')))
        assert str(err.value) == f'cannot read image {tmp_path}/none.jpg: no such file'
    # A truncated JPEG has a valid header: the lazy loader passes it on, the decode in
    # BEiTMaskedViews fails with the eager loader's message.
    data = open(save(tmp_path / 'ok.jpg', photo(120, 160)), 'rb').read()
    cut = tmp_path / 'cut.jpg'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(OSError) as eager:
        LoadImageRGB()(dict(img_path=str(cut)))
    results = LoadImageRGB(lazy=True)(dict(img_path=str(cut)))
    with pytest.raises(OSError) as lazy:
        BEiTMaskedViews(img_size=32, target_size=16)(results)
    assert str(lazy.value) == str(eager.value)
    assert str(lazy.value).startswith(f'cannot decode image {cut}: image file is truncated')
    with pytest.raises(TypeError, match='LoadImageRGB: lazy must be True or False, got 1'):
        LoadImageRGB(lazy=1)


def test_views_need_an_image():
    with pytest.raises(KeyError) as err:
        BEiTMaskedViews()(dict(img_path='x.jpg'))
    assert err.value.args[0] == (
        'BEiTMaskedViews needs results["img"] (LoadImageRGB) or results["img_encoded"] '
        '(LoadImageRGB(lazy=True)); put LoadImageRGB before it in the pipeline')
    with pytest.raises(ValueError, match=r'BEiTMaskedViews: exact must be True or False, '
                                         r"got 'yes'"):
        BEiTMaskedViews(exact='yes')


@pytest.mark.parametrize('name,mode', [('rgb.jpg', 'RGB'), ('grey.jpg', 'L'),
                                       ('alpha.png', 'RGBA'), ('p16.png', 'I;16')])
def test_lazy_views_equal_eager_views_without_draft(tmp_path, name, mode):
    """No scaled-down decode (the crop is never twice the 112 px views): the deferred
    decode gives the same pixels, whatever the mode, in both modes."""
    rgb = photo(150, 200, seed=3)
    if mode == 'L':
        img = Image.fromarray(rgb).convert('L')
    elif mode == 'RGBA':
        img = Image.fromarray(np.dstack([rgb, rgb[..., :1]]), 'RGBA')
    elif mode == 'I;16':
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    else:
        img = Image.fromarray(rgb)
    path = str(tmp_path / name)
    img.save(path)
    assert Image.open(path).mode == mode
    for exact in (False, True):
        for seed in range(3):
            kwargs = dict(img_size=112, exact=exact)
            a, b = run(path, seed, lazy=True, **kwargs), run(path, seed, lazy=False, **kwargs)
            assert a['decode_scale'] == b['decode_scale'] == 1
            for key in ('img', 'target_img', 'crop_bbox', 'flip'):
                assert np.array_equal(a[key], b[key]), (key, exact, seed)


# ---------------------------------------------------------------- scaled-down decoding

def test_encoded_image_decode_sizes(tmp_path):
    rgb = photo(250, 333)
    jpeg = EncodedImage(open(save(tmp_path / 'a.jpg', rgb), 'rb').read(), 'a.jpg')
    for reduce in (1, 2, 4, 8):
        img, applied = jpeg.decode(reduce)
        assert applied == reduce and img.mode == 'RGB'
        assert img.size == (math.ceil(333 / reduce), math.ceil(250 / reduce))
    # The reduced decode is a downscale of the same picture.
    full = np.asarray(jpeg.decode(1)[0], dtype=float)
    half = np.asarray(jpeg.decode(2)[0], dtype=float)
    pooled = full[:248, :332].reshape(124, 2, 166, 2, 3).mean((1, 3))
    assert np.abs(half[:124, :166] - pooled).mean() < 3
    png = EncodedImage(open(save(tmp_path / 'a.png', rgb, 'PNG'), 'rb').read(), 'a.png')
    img, applied = png.decode(4)
    assert applied == 1 and img.size == (333, 250) and not png.is_jpeg
    np.testing.assert_array_equal(np.asarray(img), rgb)
    with pytest.raises(ValueError, match=r'EncodedImage.decode: reduce must be 1, 2, 4 or '
                                         r'8, got 3'):
        jpeg.decode(3)


def test_draft_decoding_when_the_crop_allows_it(tmp_path, decoded_sizes):
    rgb = photo(800, 1000)
    jpeg, png = save(tmp_path / 'big.jpg', rgb), save(tmp_path / 'big.png', rgb, 'PNG')
    whole = dict(scale=(1.0, 1.0), ratio=(1.25, 1.25))      # the crop is the whole image
    cases = [
        # 800 px of crop: 224 px views fit at 1/2 (400), not at 1/4 (200)
        (jpeg, dict(img_size=224, target_size=224, **whole), 2, (500, 400)),
        # 100 px views fit at 1/8 (125 x 100)
        (jpeg, dict(img_size=100, target_size=50, **whole), 8, (125, 100)),
        # the larger of the two views decides: 224 in one of them
        (jpeg, dict(img_size=100, target_size=224, **whole), 2, (500, 400)),
        # a crop of 4-5% of the image (~200 px) is smaller than 2 x 224: full decode
        (jpeg, dict(img_size=224, scale=(0.04, 0.05)), 1, (1000, 800)),
        # a PNG is never decoded scaled down, nor anything in the exact mode
        (png, dict(img_size=100, target_size=50, **whole), 1, (1000, 800)),
        (jpeg, dict(img_size=100, target_size=50, exact=True, **whole), 1, (1000, 800)),
    ]
    for path, kwargs, scale, size in cases:
        decoded_sizes.clear()
        out = run(path, 0, **kwargs)
        assert out['decode_scale'] == scale, kwargs
        assert [c[1:] for c in decoded_sizes] == [(scale, size)], kwargs
        assert out['img'].shape[:2] == BEiTMaskedViews(**kwargs).img_size


@pytest.mark.parametrize('flip_prob', [0.0, 1.0])
def test_draft_views_show_the_drawn_box(tmp_path, flip_prob):
    """On a coordinate image (R = x / 4, G = y / 4) views decoded at 1/2 and 1/4
    show the drawn crop box: each border moves by at most one output pixel."""
    y, x = np.mgrid[0:1024, 0:1024]
    img = np.stack([x // 4, y // 4, np.zeros_like(x)], -1).astype(np.uint8)
    path = save(tmp_path / 'coords.jpg', img, quality=95)
    scales = set()
    for seed in range(8):
        out = run(path, seed, img_size=112, target_size=112, scale=(0.1, 1.0),
                  color_jitter=None, flip_prob=flip_prob)
        scales.add(out['decode_scale'])
        x1, y1, x2, y2 = out['crop_bbox']          # in the flipped image when flipped
        view = out['img'].astype(float)
        xs = x1 + (np.arange(112) + 0.5) * (x2 - x1) / 112
        ys = y1 + (np.arange(112) + 0.5) * (y2 - y1) / 112
        if flip_prob:
            xs = 1024 - xs                          # flipped coordinates -> stored ones
        m = 4
        step = max(x2 - x1, y2 - y1) / 112 / 4      # grey levels per output pixel
        tol = step + 2.5                            # one output pixel + JPEG error
        assert np.abs(view[m:-m, m:-m, 0] - xs[None, m:-m] / 4).max() <= tol
        assert np.abs(view[m:-m, m:-m, 1] - ys[m:-m, None] / 4).max() <= tol
    assert scales >= {2, 4}


# ---------------------------------------------------------------- fast vs exact

def difference(a, b):
    d = np.abs(a.astype(int) - b)
    return d.max(), d.mean()


@pytest.mark.parametrize('config', [dict(), V2])
def test_fast_views_within_the_stated_bounds_of_the_exact_ones(config):
    """Without scaled-down decoding the fast views differ from the exact ones (= the
    torchvision reference) by at most 8 grey levels, 1 on average per view (measured:
    4 and 0.09); draws, crop box and flip are the same."""
    img = photo(300, 400, seed=5)
    worst, means = 0, []
    for seed in range(8):
        torch.manual_seed(seed)
        fast = BEiTMaskedViews(**config)(dict(img=img.copy()))
        after_fast = torch.get_rng_state()
        torch.manual_seed(seed)
        exact = BEiTMaskedViews(exact=True, **config)(dict(img=img.copy()))
        assert torch.equal(after_fast, torch.get_rng_state())   # same draws consumed
        assert (fast['crop_bbox'], fast['flip']) == (exact['crop_bbox'], exact['flip'])
        for key in ('img', 'target_img'):
            mx, mean = difference(fast[key], exact[key])
            worst = max(worst, mx)
            means.append(mean)
            assert mean <= 1.0, (seed, key, mean)
    assert worst <= 8
    assert 0 < np.mean(means) <= 0.3      # a different computation, close to the reference


def test_one_pass_blends_match_pillow_within_one_level():
    """Brightness / contrast (blend with a constant) on every value 0..255 and
    saturation (blend with the pixel's grey) on random pixels, against Pillow."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ramp = Image.fromarray(values)
    differing = total = 0
    for factor in np.linspace(0.6, 1.4, 17):
        for grey in (0, 37, 128, 201):
            ref = np.asarray(Image.blend(Image.new('RGB', (16, 16), (grey,) * 3), ramp, factor))
            d = np.abs(mim_views._blend_affine(values, factor, grey).astype(int) - ref)
            assert d.max() <= 1
            differing, total = differing + (d > 0).sum(), total + d.size
        pil = Image.fromarray(pixels)
        grey_img = pil.convert('L').convert('RGB')
        ref = np.asarray(Image.blend(grey_img, pil, factor))
        d = np.abs(mim_views._blend_affine(pixels, factor).astype(int) - ref)
        assert d.max() <= 1 and (d > 0).mean() < 0.2
    assert differing / total < 0.01


# ---------------------------------------------------------------- randomness

def test_same_seed_same_views_only_torch_rng_used(tmp_path):
    path = save(tmp_path / 'big.jpg', photo(700, 900, seed=1))
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    outs = [run(path, seed, **V2) for seed in (0, 0, 1, 2, 3, 4, 5, 6)]
    assert {o['decode_scale'] for o in outs} == {1, 2}        # both paths were taken
    for key in ('img', 'target_img', 'crop_bbox', 'flip'):
        assert np.array_equal(outs[0][key], outs[1][key])
    assert not np.array_equal(outs[0]['img'], outs[2]['img'])
    # Neither numpy's nor Python's global RNG was touched (numpy's belongs to MIMMask).
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert random.getstate() == py_state
    # v2's two views are equal (same size and filter), resized once.
    assert all(np.array_equal(o['img'], o['target_img']) for o in outs)


def test_exact_mode_through_the_lazy_loader_equals_the_eager_reference(tmp_path):
    path = save(tmp_path / 'big.jpg', photo(700, 900, seed=2))
    for seed in range(3):
        a = run(path, seed, lazy=True, exact=True, **V2)
        b = run(path, seed, lazy=False, exact=True, **V2)
        assert a['decode_scale'] == 1
        assert np.array_equal(a['img'], b['img'])
