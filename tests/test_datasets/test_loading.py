"""LoadImageRGB: every Pillow mode becomes 8-bit RGB; bad files fail naming the file
(the rules are in mmbeit/datasets/transforms/loading.py)."""
import io
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from mmbeit.datasets.transforms import LoadImageRGB
from mmbeit.registry import TRANSFORMS


def load(path):
    out = LoadImageRGB()(dict(img_path=str(path)))
    img = out['img']
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8
    assert img.ndim == 3 and img.shape[2] == 3 and img.flags.c_contiguous
    assert out['img_shape'] == out['ori_shape'] == img.shape[:2]
    return img


def reference(path):
    """What the reference loader (torchvision's pil_loader) reads."""
    with Image.open(path) as img:
        return np.array(img.convert('RGB'))


def grey3(values):
    values = np.asarray(values, np.uint8)
    return np.stack([values] * 3, axis=-1)


def test_registered_and_rgb_order(tmp_path):
    assert TRANSFORMS.get('LoadImageRGB') is LoadImageRGB
    rgb = np.zeros((3, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 7
    rgb[1, 2] = (1, 2, 3)
    path = tmp_path / 'rgb.png'
    Image.fromarray(rgb).save(path)
    img = load(path)
    assert img.shape == (3, 5, 3)                 # H, W from the file, not square
    np.testing.assert_array_equal(img, rgb)       # R first: not BGR


def test_grey_l_and_bilevel(tmp_path):
    values = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    Image.fromarray(values, 'L').save(tmp_path / 'l.png')
    np.testing.assert_array_equal(load(tmp_path / 'l.png'), grey3(values))
    bits = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert('1')
    bits.save(tmp_path / 'b.png')
    np.testing.assert_array_equal(load(tmp_path / 'b.png'), grey3([[0, 255], [255, 0]]))


def test_alpha_is_dropped_not_composited(tmp_path):
    # LA: a fully transparent grey pixel keeps its grey (compositing on black gives 0).
    la = np.array([[[77, 0], [9, 255], [150, 128]]], np.uint8)
    Image.fromarray(la, 'LA').save(tmp_path / 'la.png')
    np.testing.assert_array_equal(load(tmp_path / 'la.png'), grey3([[77, 9, 150]]))
    rgba = np.array([[[10, 20, 30, 0], [250, 128, 1, 255], [5, 6, 7, 64]]], np.uint8)
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
    img = load(tmp_path / 'rgba.png')
    np.testing.assert_array_equal(img, rgba[..., :3])
    np.testing.assert_array_equal(img, reference(tmp_path / 'rgba.png'))


def test_palette_with_transparency(tmp_path):
    pal = Image.new('P', (3, 2))
    pal.putpalette([200, 10, 20, 1, 2, 3] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 0])
    pal.save(tmp_path / 'p.png', transparency=0)
    with Image.open(tmp_path / 'p.png') as check:
        assert check.mode == 'P' and check.info['transparency'] == 0
    img = load(tmp_path / 'p.png')
    red, dark = (200, 10, 20), (1, 2, 3)
    expected = np.array([[red, dark, red], [dark, dark, red]], np.uint8)
    np.testing.assert_array_equal(img, expected)  # the transparent entry keeps its colour


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new('CMYK', (8, 8), (0, 0, 0, 0))
    cmyk.paste((0, 255, 0, 0), (0, 0, 4, 8))      # left half: magenta ink only
    cmyk.save(tmp_path / 'cmyk.jpg', quality=100)
    with Image.open(tmp_path / 'cmyk.jpg') as check:
        assert check.mode == 'CMYK'
    img = load(tmp_path / 'cmyk.jpg')
    np.testing.assert_array_equal(img, reference(tmp_path / 'cmyk.jpg'))
    assert np.abs(img[:, 0].astype(int) - (255, 0, 255)).max() <= 3
    assert np.abs(img[:, -1].astype(int) - 255).max() <= 3


def test_16bit_grey_png_is_shifted_by_8(tmp_path):
    values = np.array([[0xABCD, 0x00FF, 0x0100, 0xFFFF, 0x8000]], np.uint16)
    Image.fromarray(values).save(tmp_path / 'g16.png')
    with Image.open(tmp_path / 'g16.png') as check:
        assert check.mode == 'I;16'
    np.testing.assert_array_equal(load(tmp_path / 'g16.png'),
                                  grey3([[0xAB, 0x00, 0x01, 0xFF, 0x80]]))
    # What the reference loader would give instead: everything above 255 clipped.
    assert (reference(tmp_path / 'g16.png')[0, 0] == 255).all()


def test_32bit_int_and_float_grey(tmp_path):
    small = np.array([[0, 0xABCD, 65535]], np.int32)        # 16-bit data, mode I
    Image.fromarray(small).save(tmp_path / 'i16.tif')
    wide = np.array([[-5, 0x12345678, 2**31 - 1]], np.int32)
    Image.fromarray(wide).save(tmp_path / 'i32.tif')
    floats = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, 0.2]], np.float32)
    Image.fromarray(floats).save(tmp_path / 'f.tif')
    with Image.open(tmp_path / 'i32.tif') as a, Image.open(tmp_path / 'f.tif') as b:
        assert (a.mode, b.mode) == ('I', 'F')
    np.testing.assert_array_equal(load(tmp_path / 'i16.tif'), grey3([[0, 0xAB, 0xFF]]))
    np.testing.assert_array_equal(load(tmp_path / 'i32.tif'),
                                  grey3([[0, 0x12345678 >> 23, 255]]))
    np.testing.assert_array_equal(load(tmp_path / 'f.tif'),
                                  grey3([[0, 128, 255, 255, 0, 51]]))


def test_16bit_rgb_and_rgba_png_keep_the_high_byte(tmp_path):
    rgb16 = np.zeros((2, 3, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 0x1234, 0xABCD, 0xFF01
    assert cv2.imwrite(str(tmp_path / 'rgb16.png'), rgb16[..., ::-1])  # cv2 writes BGR
    rgba16 = np.concatenate([rgb16, np.full((2, 3, 1), 0x0101, np.uint16)], axis=-1)
    assert cv2.imwrite(str(tmp_path / 'rgba16.png'), rgba16[..., [2, 1, 0, 3]])
    expected = np.zeros((2, 3, 3), np.uint8) + np.array([0x12, 0xAB, 0xFF], np.uint8)
    np.testing.assert_array_equal(load(tmp_path / 'rgb16.png'), expected)
    np.testing.assert_array_equal(load(tmp_path / 'rgba16.png'), expected)


@pytest.mark.parametrize('name,kwargs', [('x.webp', dict(lossless=True)), ('x.bmp', {}),
                                         ('x.JPEG', dict(quality=90))])
def test_other_formats(tmp_path, name, kwargs):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / name, **kwargs)
    img = load(tmp_path / name)
    np.testing.assert_array_equal(img, reference(tmp_path / name))
    if not name.endswith('JPEG'):                 # lossless formats: the exact pixels
        np.testing.assert_array_equal(img, rgb)


def test_corrupt_file_fails_naming_it(tmp_path):
    path = tmp_path / 'data' / 'x' / 'bad.jpg'
    path.parent.mkdir(parents=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(OSError) as err:
        LoadImageRGB()(dict(img_path=str(path)))
    assert str(err.value) == f'cannot decode image {path}: cannot identify the image format'


@pytest.mark.parametrize('fmt,suffix', [('JPEG', 'jpg'), ('PNG', 'png')])
def test_truncated_file_fails_naming_it(tmp_path, fmt, suffix):
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(buf, fmt)
    path = tmp_path / f'cut.{suffix}'
    path.write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    with pytest.raises(OSError) as err:
        LoadImageRGB()(dict(img_path=str(path)))
    assert re.fullmatch(rf'cannot decode image {re.escape(str(path))}: .*truncated.*',
                        str(err.value), flags=re.IGNORECASE), str(err.value)


def test_missing_file_fails_naming_it(tmp_path):
    path = tmp_path / 'nope.png'
    with pytest.raises(FileNotFoundError) as err:
        LoadImageRGB()(dict(img_path=str(path)))
    assert str(err.value) == f'cannot read image {path}: no such file'
