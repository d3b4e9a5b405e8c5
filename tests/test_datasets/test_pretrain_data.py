"""The data side of BEiT / BEiT v2 pretraining: the unlabeled folder
dataset, the two views from one crop, packing, collation, and the same pipeline on
mmpretrain's ImageNet."""
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate, pseudo_collate
from mmengine.registry import DefaultScope
from mmengine.structures import BaseDataElement
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from mmbeit.datasets import (
    BEiTMaskedViews,
    LoadImageRGB,
    MIMMask,
    PackMIMInputs,
    UnlabeledImageFolder,
    list_images,
)
from mmbeit.registry import DATASETS, TRANSFORMS

NO_AUG = dict(color_jitter=None, flip_prob=0.0)
FULL_SQUARE = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def coordinate_image(h=200, w=256):
    """R = x, G = y, B = 0: a pixel's value says where it came from."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
    img[..., 1] = np.arange(h, dtype=np.uint8)[:, None]
    return img


def views(img, seed=0, **kwargs):
    """The views in the exact mode, which these tests compare with Pillow bit for bit (the
    fast mode's bounds: test_fast_views.py)."""
    torch.manual_seed(seed)
    kwargs.setdefault('exact', True)
    return BEiTMaskedViews(**kwargs)(dict(img=img.copy(), img_shape=img.shape[:2]))


def write_images(root, rel_paths, size=(20, 24)):
    for i, rel in enumerate(rel_paths):
        path = osp.join(root, rel)
        os.makedirs(osp.dirname(path), exist_ok=True)
        fmt = {'.jpg': 'JPEG', '.jpeg': 'JPEG', '.png': 'PNG', '.webp': 'WEBP',
               '.bmp': 'BMP', '.gif': 'GIF', '.tiff': 'TIFF'}.get(osp.splitext(rel)[1].lower())
        if fmt is None:
            with open(path, 'w') as f:
                f.write('not an image')
        else:
            Image.fromarray(random_image(*size, seed=i)).save(path, fmt)


# ---------------------------------------------------------------- BEiTMaskedViews

def test_views_registered_and_defaults():
    assert TRANSFORMS.get('BEiTMaskedViews') is BEiTMaskedViews
    t = BEiTMaskedViews()
    assert (t.img_size, t.target_size) == ((224, 224), (112, 112))
    assert (t.interpolation, t.target_interpolation) == ('bicubic', 'lanczos')
    assert t.scale == (0.08, 1.0) and t.ratio == (3 / 4, 4 / 3)
    assert t.color_jitter == (0.4, 0.4, 0.4, 0.0) and t.flip_prob == 0.5
    assert BEiTMaskedViews(color_jitter=(0.1, 0.2, 0.3)).color_jitter == (0.1, 0.2, 0.3, 0.0)


@pytest.mark.parametrize('cfg,tv', [
    (dict(), ((0.08, 1.0), 112, InterpolationMode.LANCZOS)),
    (dict(target_size=224, target_interpolation='bicubic', scale=(0.2, 1.0)),
     ((0.2, 1.0), 224, InterpolationMode.BICUBIC)),
])
def test_views_equal_the_torchvision_reference_pipeline(cfg, tv):
    """Same torch seed -> the same pixels as ColorJitter -> flip -> one crop resized twice,
    written with torchvision ops on PIL images as the reference code does."""
    scale, second_size, second_interp = tv
    img = random_image(90, 130, seed=1)
    flips = set()
    for seed in range(6):
        out = views(img, seed, **cfg)
        torch.manual_seed(seed)
        pil = T.ColorJitter(0.4, 0.4, 0.4)(Image.fromarray(img))
        pil = T.RandomHorizontalFlip(0.5)(pil)
        i, j, h, w = T.RandomResizedCrop.get_params(pil, scale, (3 / 4, 4 / 3))
        first = np.array(F.resized_crop(pil, i, j, h, w, [224, 224],
                                        InterpolationMode.BICUBIC))
        second = np.array(F.resized_crop(pil, i, j, h, w, [second_size] * 2, second_interp))
        np.testing.assert_array_equal(out['img'], first)
        np.testing.assert_array_equal(out['target_img'], second)
        assert out['crop_bbox'] == (j, i, j + w, i + h)
        assert out['img'].dtype == out['target_img'].dtype == np.uint8
        assert out['img_shape'] == (224, 224) and out['target_img'].shape == (
            second_size, second_size, 3)
        flips.add(out['flip'])
    assert flips == {True, False}


def test_deterministic_crop_resizes_the_original_twice():
    img = random_image(64, 64, seed=2)
    out = views(img, **NO_AUG, **FULL_SQUARE)
    full = Image.fromarray(img)
    assert out['crop_bbox'] == (0, 0, 64, 64) and out['flip'] is False
    backbone = np.array(full.resize((224, 224), Image.Resampling.BICUBIC))
    target = np.array(full.resize((112, 112), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out['img'], backbone)
    np.testing.assert_array_equal(out['target_img'], target)
    # Negative control: the target is not a resize of the backbone view.
    from_view = np.array(Image.fromarray(backbone).resize((112, 112),
                                                          Image.Resampling.LANCZOS))
    assert not np.array_equal(out['target_img'], from_view)


def test_v2_style_views_are_identical():
    out = views(random_image(80, 100), seed=5, target_size=224,
                target_interpolation='bicubic')
    np.testing.assert_array_equal(out['img'], out['target_img'])


def test_non_square_sizes_and_other_filters():
    out = views(random_image(64, 64), **NO_AUG, **FULL_SQUARE, img_size=(32, 48),
                target_size=(16, 8), interpolation='bilinear', target_interpolation='nearest')
    full = Image.fromarray(random_image(64, 64))
    assert out['img'].shape == (32, 48, 3) and out['img_shape'] == (32, 48)
    np.testing.assert_array_equal(out['img'],
                                  np.array(full.resize((48, 32), Image.Resampling.BILINEAR)))
    np.testing.assert_array_equal(out['target_img'],
                                  np.array(full.resize((8, 16), Image.Resampling.NEAREST)))


def expected_ramp(lo, length, out_len):
    """Source coordinate of each output pixel centre of a resize of [lo, lo + length)."""
    return lo + (np.arange(out_len) + 0.5) * length / out_len - 0.5


@pytest.mark.parametrize('seed', range(8))
def test_random_crop_both_views_show_the_same_region(seed):
    img = coordinate_image()
    out = views(img, seed, **NO_AUG)
    x1, y1, x2, y2 = out['crop_bbox']
    w, h = x2 - x1, y2 - y1
    assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 200
    assert 0.08 * 256 * 200 - 256 - 200 <= w * h <= 256 * 200
    m = 6  # pixels at the borders see the filters' edge handling
    for key, size in (('img', 224), ('target_img', 112)):
        view = out[key].astype(float)
        xs, ys = expected_ramp(x1, w, size), expected_ramp(y1, h, size)
        # R = x and G = y inside the view follow the crop box, in both views.
        assert np.abs(view[m:-m, m:-m, 0] - xs[None, m:-m]).max() <= 1.0, key
        assert np.abs(view[m:-m, m:-m, 1] - ys[m:-m, None]).max() <= 1.0, key
        assert (view[..., 2] == 0).all()
    # Pixel (v, u) of the target view sits between backbone pixels 2v, 2v + 1.
    pooled = out['img'].astype(float).reshape(112, 2, 112, 2, 3).mean((1, 3))
    assert np.abs(pooled[m:-m, m:-m] - out['target_img'][m:-m, m:-m]).max() <= 1.5


def test_crop_statistics_follow_scale_and_ratio():
    img = random_image(120, 160)
    t = BEiTMaskedViews(img_size=16, target_size=8, **NO_AUG, scale=(0.3, 0.6),
                        ratio=(0.5, 2.0))
    torch.manual_seed(0)
    areas, ratios = [], []
    for _ in range(200):
        x1, y1, x2, y2 = t(dict(img=img))['crop_bbox']
        areas.append((x2 - x1) * (y2 - y1) / (120 * 160))
        ratios.append((x2 - x1) / (y2 - y1))
    assert 0.28 <= min(areas) and max(areas) <= 0.62 and np.ptp(areas) > 0.2
    assert 0.45 <= min(ratios) and max(ratios) <= 2.1 and min(ratios) < 0.7 < 1.5 < max(ratios)


def test_flip_mirrors_both_views():
    img = random_image(64, 64, seed=4)
    out = views(img, color_jitter=None, flip_prob=1.0, **FULL_SQUARE)
    assert out['flip'] is True and out['flip_direction'] == 'horizontal'
    mirrored = Image.fromarray(img[:, ::-1])
    np.testing.assert_array_equal(out['img'], np.array(
        mirrored.resize((224, 224), Image.Resampling.BICUBIC)))
    np.testing.assert_array_equal(out['target_img'], np.array(
        mirrored.resize((112, 112), Image.Resampling.LANCZOS)))
    plain = views(img, **NO_AUG, **FULL_SQUARE)
    assert np.abs(out['img'].astype(int) - plain['img'][:, ::-1]).max() <= 1
    assert np.abs(out['target_img'].astype(int) - plain['target_img'][:, ::-1]).max() <= 1
    # On the coordinate image R (= x) now falls from left to right, in both views.
    coords = views(coordinate_image(256, 256), color_jitter=None, flip_prob=1.0, **FULL_SQUARE)
    for key in ('img', 'target_img'):
        row = coords[key][50, :, 0].astype(int)
        assert row[5] > 240 and row[-6] < 15 and (np.diff(row[5:-5]) <= 0).all()
    assert all(views(img, s, color_jitter=None, flip_prob=0.0)['flip'] is False
               for s in range(10))


def test_color_jitter_changes_values_not_geometry():
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (40, 90, 60)
    img[:, 32:] = (200, 150, 100)
    plain = views(img, **NO_AUG, **FULL_SQUARE, target_interpolation='bicubic')
    for seed in range(5):
        out = views(img, seed, flip_prob=0.0, **FULL_SQUARE, target_interpolation='bicubic')
        assert out['crop_bbox'] == plain['crop_bbox'] == (0, 0, 64, 64)
        for key in ('img', 'target_img'):
            assert not np.array_equal(out[key], plain[key])  # probability 1, every seed
            # The edge stays where it was: left half darker than the right half.
            lum = out[key].astype(float).mean(axis=2)
            half, m = lum.shape[1] // 2, lum.shape[1] // 16   # m: past the filter's reach
            assert lum[:, :half - 1].max() < lum[:, half + 1:].min()
            assert np.ptp(lum[:, :half - m]) <= 1 and np.ptp(lum[:, half + m:]) <= 1
    # A grey image is left grey by brightness/contrast/saturation jitter.
    grey = views(np.full((32, 32, 3), 128, np.uint8), 1, flip_prob=0.0, **FULL_SQUARE)['img']
    assert (grey == grey[..., :1]).all()


@pytest.mark.parametrize('kwargs,message', [
    (dict(interpolation='cubic'),
     "BEiTMaskedViews: interpolation 'cubic' is not one of ['bicubic', 'bilinear', 'box', "
     "'hamming', 'lanczos', 'nearest']"),
    (dict(target_interpolation='area'),
     "BEiTMaskedViews: target_interpolation 'area' is not one of ['bicubic', 'bilinear', "
     "'box', 'hamming', 'lanczos', 'nearest']"),
    (dict(scale=(0.5, 0.2)),
     'BEiTMaskedViews: scale must satisfy 0 < min <= max <= 1.0, got (0.5, 0.2)'),
    (dict(scale=(0.1, 1.5)),
     'BEiTMaskedViews: scale must satisfy 0 < min <= max <= 1.0, got (0.1, 1.5)'),
    (dict(ratio=0.75), 'BEiTMaskedViews: ratio must be a (min, max) pair, got 0.75'),
    (dict(img_size=0),
     'BEiTMaskedViews: img_size must be a positive int or an (h, w) pair of them, got (0, 0)'),
    (dict(target_size=(7,)),
     'BEiTMaskedViews: target_size must be a positive int or an (h, w) pair of them, '
     'got (7,)'),
    (dict(color_jitter=(0.4, 0.4)),
     'BEiTMaskedViews: color_jitter must be None or (brightness, contrast, saturation[, hue])'
     ' with values >= 0, got (0.4, 0.4)'),
    (dict(flip_prob=1.5), 'BEiTMaskedViews: flip_prob must be in [0, 1], got 1.5'),
])
def test_views_argument_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        BEiTMaskedViews(**kwargs)
    assert str(err.value) == message


def test_views_reject_non_rgb_uint8_input():
    with pytest.raises(TypeError) as err:
        BEiTMaskedViews()(dict(img=np.zeros((8, 8), np.uint8)))
    assert str(err.value) == ('BEiTMaskedViews needs results["img"] as an HxWx3 uint8 RGB '
                              'array (use LoadImageRGB), got uint8 array of shape (8, 8)')


# ---------------------------------------------------------------- PackMIMInputs

def test_pack_shapes_dtypes_and_values():
    img, target = random_image(20, 30, 1), random_image(10, 15, 2)
    mask = np.arange(6) % 2 == 0
    out = PackMIMInputs()(dict(img=img, target_img=target, mask=mask, img_path='a/b.png',
                               img_shape=(20, 30), ori_shape=(50, 60), flip=True))
    assert set(out) == {'inputs', 'data_samples'}
    x, y, m = out['inputs']
    assert isinstance(out['inputs'], list)
    assert x.dtype == y.dtype == torch.uint8 and m.dtype == torch.bool
    assert x.shape == (3, 20, 30) and y.shape == (3, 10, 15) and m.shape == (6,)
    assert x.is_contiguous() and y.is_contiguous()
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), img)   # channel 0 is R
    np.testing.assert_array_equal(y.permute(1, 2, 0).numpy(), target)
    np.testing.assert_array_equal(m.numpy(), mask)
    sample = out['data_samples']
    assert isinstance(sample, BaseDataElement)
    assert sample.metainfo == dict(img_path='a/b.png', img_shape=(20, 30), ori_shape=(50, 60))


def test_pack_errors():
    with pytest.raises(KeyError, match=r"PackMIMInputs needs results\['target_img'\]; put "
                                       r'BEiTMaskedViews before it in the pipeline'):
        PackMIMInputs()(dict(img=random_image(4, 4)))
    with pytest.raises(KeyError, match=r"PackMIMInputs needs results\['mask'\]; put "
                                       r'MIMMask before it in the pipeline'):
        PackMIMInputs()(dict(img=random_image(4, 4), target_img=random_image(4, 4)))
    with pytest.raises(TypeError) as err:
        PackMIMInputs()(dict(img=random_image(4, 4), target_img=np.zeros((4, 4, 3)),
                             mask=np.zeros(4, bool)))
    assert str(err.value) == ("PackMIMInputs needs results['target_img'] as an HxWx3 uint8 "
                              'RGB array, got float64 array of shape (4, 4, 3)')
    with pytest.raises(TypeError) as err:
        PackMIMInputs()(dict(img=random_image(4, 4), target_img=random_image(4, 4),
                             mask=np.zeros((2, 2), bool)))
    assert str(err.value) == ("PackMIMInputs needs results['mask'] as a 1-D bool array "
                              '(MIMMask), got bool array of shape (2, 2)')


def test_collate_gives_one_entry_per_input():
    pipeline = [BEiTMaskedViews(img_size=32, target_size=16),
                MIMMask(patch_size=8, generator=dict(type='RandomMaskGenerator')),
                PackMIMInputs()]
    samples = []
    for i in range(3):
        results = dict(img=random_image(40, 50, i), img_path=f'{i}.png')
        for t in pipeline:
            results = t(results)
        samples.append(results)
    batch = pseudo_collate(samples)
    imgs, targets, masks = batch['inputs']
    assert len(imgs) == len(targets) == len(masks) == 3
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.uint8 for x in imgs)
    assert all(y.shape == (3, 16, 16) for y in targets)
    assert all(m.shape == (16,) and m.dtype == torch.bool for m in masks)
    for i in range(3):
        assert imgs[i] is samples[i]['inputs'][0] and targets[i] is samples[i]['inputs'][1]
    assert [d.img_path for d in batch['data_samples']] == ['0.png', '1.png', '2.png']
    stacked = default_collate(samples)['inputs']
    assert stacked[0].shape == (3, 3, 32, 32) and stacked[1].shape == (3, 3, 16, 16)
    assert stacked[2].shape == (3, 16)
    assert torch.equal(stacked[0], torch.stack(imgs))
    assert torch.equal(stacked[2], torch.stack(masks))


# ---------------------------------------------------------------- UnlabeledImageFolder

TREE = ['b/2.JPG', 'a/1.png', 'a/sub/3.jpeg', 'c.webp', 'd.bmp', 'a/sub/deep/4.PnG',
        'notes.txt', 'e.gif', 'f.tiff', '.hidden.png', '.cache/x.png', 'a/.x/y.jpg',
        'b/noext']
LISTED = ['a/1.png', 'a/sub/3.jpeg', 'a/sub/deep/4.PnG', 'b/2.JPG', 'c.webp', 'd.bmp']


def test_list_images_recursive_sorted_filtered(tmp_path):
    write_images(tmp_path, TREE)
    assert list_images(str(tmp_path)) == LISTED


def test_folder_dataset_lists_images(tmp_path):
    write_images(tmp_path, TREE)
    assert DATASETS.get('UnlabeledImageFolder') is UnlabeledImageFolder
    ds = UnlabeledImageFolder(data_root=str(tmp_path))
    assert len(ds) == 6
    assert [ds.get_data_info(i)['img_path'] for i in range(6)] == [
        osp.join(str(tmp_path), p) for p in LISTED]
    assert set(ds.get_data_info(0)) == {'img_path', 'sample_idx'}
    few = UnlabeledImageFolder(data_root=str(tmp_path), max_images=2)
    assert [few.get_data_info(i)['img_path'] for i in range(len(few))] == [
        osp.join(str(tmp_path), p) for p in LISTED[:2]]
    sub = UnlabeledImageFolder(data_root=str(tmp_path), data_prefix='a/sub')
    assert [sub.get_data_info(i)['img_path'] for i in range(len(sub))] == [
        osp.join(str(tmp_path), 'a/sub', p) for p in ('3.jpeg', 'deep/4.PnG')]


def test_folder_dataset_ann_file(tmp_path):
    write_images(tmp_path / 'imgs', ['x/1.png', 'x/2 two.png', 'y/3.jpg'])
    (tmp_path / 'list.txt').write_text('y/3.jpg 7\n\nx/1.png\n  x/2 two.png 0  \nx/1.png 12\n')
    ds = UnlabeledImageFolder(data_root=str(tmp_path), ann_file='list.txt', data_prefix='imgs')
    root = osp.join(str(tmp_path), 'imgs')
    assert [ds.get_data_info(i)['img_path'] for i in range(len(ds))] == [
        osp.join(root, p) for p in ('y/3.jpg', 'x/1.png', 'x/2 two.png', 'x/1.png')]
    ds = UnlabeledImageFolder(data_root=str(tmp_path), ann_file=str(tmp_path / 'list.txt'),
                              data_prefix=dict(img_path='imgs'), max_images=1)
    assert len(ds) == 1 and ds.get_data_info(0)['img_path'] == osp.join(root, 'y/3.jpg')


def test_folder_dataset_errors(tmp_path):
    missing = str(tmp_path / 'nowhere')
    hint = ('; set data_root in the config, or on the command line (pretraining configs, '
            'where SeededDataset wraps it) with --cfg-options '
            'train_dataloader.dataset.dataset.data_root=/path/to/images')
    with pytest.raises(FileNotFoundError) as err:
        UnlabeledImageFolder(data_root=missing)
    assert str(err.value) == f"UnlabeledImageFolder: data_root '{missing}' is not a folder{hint}"
    with pytest.raises(FileNotFoundError) as err:
        UnlabeledImageFolder()
    assert str(err.value) == f'UnlabeledImageFolder: data_root is not set{hint}'
    with pytest.raises(FileNotFoundError) as err:
        UnlabeledImageFolder(data_root=str(tmp_path), data_prefix='train')
    assert str(err.value) == (f"UnlabeledImageFolder: the image folder '{tmp_path}/train' "
                              f'(data_root + data_prefix) is not a folder{hint}')
    write_images(tmp_path / 'empty', ['notes.txt', '.hidden.jpg', 'a.gif'])
    with pytest.raises(FileNotFoundError) as err:
        UnlabeledImageFolder(data_root=str(tmp_path / 'empty'))
    assert str(err.value) == (
        f"UnlabeledImageFolder: no images found under '{tmp_path}/empty' (searched "
        'recursively for .jpg, .jpeg, .png, .webp, .bmp in any case; hidden files and '
        'folders are skipped)')
    with pytest.raises(FileNotFoundError) as err:
        UnlabeledImageFolder(data_root=str(tmp_path), ann_file='meta/train.txt')
    assert str(err.value) == (f"UnlabeledImageFolder: ann_file '{tmp_path}/meta/train.txt' "
                              'does not exist (a relative ann_file is read from data_root)')
    (tmp_path / 'blank.txt').write_text('\n  \n')
    with pytest.raises(ValueError) as err:
        UnlabeledImageFolder(data_root=str(tmp_path), ann_file='blank.txt')
    assert str(err.value) == f"UnlabeledImageFolder: ann_file '{tmp_path}/blank.txt' lists no image"
    with pytest.raises(ValueError) as err:
        UnlabeledImageFolder(data_root=str(tmp_path), max_images=0)
    assert str(err.value) == ('UnlabeledImageFolder: max_images must be a positive int or '
                              'None, got 0')


def test_corrupt_image_in_dataset_raises_instead_of_skipping(tmp_path):
    write_images(tmp_path, ['a.png'])
    (tmp_path / 'b.jpg').write_bytes(b'\x00garbage' * 50)
    ds = UnlabeledImageFolder(data_root=str(tmp_path), pipeline=[LoadImageRGB()])
    assert ds[0]['img'].shape == (20, 24, 3)
    with pytest.raises(OSError) as err:
        ds[1]
    assert str(err.value) == (f'cannot decode image {tmp_path}/b.jpg: cannot identify the '
                              'image format')


def mim_pipeline(prefix='', **view_kwargs):
    return [dict(type=f'{prefix}LoadImageRGB'),
            dict(type=f'{prefix}BEiTMaskedViews', **view_kwargs),
            dict(type=f'{prefix}MIMMask', patch_size=4,
                 generator=dict(type='RandomMaskGenerator', mask_ratio=0.5)),
            dict(type=f'{prefix}PackMIMInputs')]


def test_dataloader_over_folder_dataset_built_from_the_registry(tmp_path):
    from mmengine.runner import Runner
    write_images(tmp_path, LISTED, size=(40, 50))
    cfg = dict(batch_size=4, num_workers=0,
               sampler=dict(type='DefaultSampler', shuffle=False),
               dataset=dict(type='UnlabeledImageFolder', data_root=str(tmp_path),
                            pipeline=mim_pipeline(img_size=32, target_size=16)))
    with DefaultScope.overwrite_default_scope('mmbeit'):
        loader = Runner.build_dataloader(cfg, seed=0)
        assert type(loader.dataset) is UnlabeledImageFolder
        batch = next(iter(loader))
    imgs, targets, masks = batch['inputs']
    assert len(imgs) == len(targets) == len(masks) == 4
    assert all(m.shape == (64,) and m.sum() == 32 for m in masks)
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.uint8 for x in imgs)
    assert all(y.shape == (3, 16, 16) and y.dtype == torch.uint8 for y in targets)
    assert [d.img_path for d in batch['data_samples']] == [
        osp.join(str(tmp_path), p) for p in LISTED[:4]]
    assert all(d.img_shape == (32, 32) and d.ori_shape == (40, 50)
               for d in batch['data_samples'])


def test_folder_dataset_builds_its_pipeline_in_mmbeit_without_a_default_scope(tmp_path):
    write_images(tmp_path, ['a.png'])
    ds = UnlabeledImageFolder(data_root=str(tmp_path),
                              pipeline=mim_pipeline(img_size=8, target_size=4))
    assert [type(t) for t in ds.pipeline.transforms] == [LoadImageRGB, BEiTMaskedViews,
                                                         MIMMask, PackMIMInputs]
    assert [tuple(x.shape) for x in ds[0]['inputs']] == [(3, 8, 8), (3, 4, 4), (4,)]


def test_same_pipeline_on_mmpretrain_imagenet_and_folder(demo_data):
    from mmengine.registry import DATASETS as ROOT_DATASETS
    root = str(demo_data / 'imagenet')
    view_kwargs = dict(img_size=48, target_size=24, **FULL_SQUARE, **NO_AUG, exact=True)
    with DefaultScope.overwrite_default_scope('mmbeit'):
        imagenet = ROOT_DATASETS.build(dict(
            type='mmpretrain.ImageNet', _scope_='mmpretrain', data_root=root, split='train',
            pipeline=mim_pipeline('mmbeit.', **view_kwargs)))
        folder = ROOT_DATASETS.build(dict(
            type='UnlabeledImageFolder', data_root=root, data_prefix='train',
            pipeline=mim_pipeline(**view_kwargs)))
        listed = ROOT_DATASETS.build(dict(
            type='UnlabeledImageFolder', data_root=root, ann_file='meta/train.txt',
            data_prefix='train'))
    assert type(imagenet).__module__.startswith('mmpretrain.')
    assert [type(t) for t in imagenet.pipeline.transforms] == [LoadImageRGB, BEiTMaskedViews,
                                                               MIMMask, PackMIMInputs]
    paths = [imagenet.get_data_info(i)['img_path'] for i in range(len(imagenet))]
    assert len(paths) == 64
    assert sorted(paths) == [folder.get_data_info(i)['img_path'] for i in range(len(folder))]
    assert paths == [listed.get_data_info(i)['img_path'] for i in range(len(listed))]
    index = {folder.get_data_info(i)['img_path']: i for i in range(len(folder))}
    for i in (0, 37):
        a, b = imagenet[i], folder[index[paths[i]]]
        assert a['data_samples'].img_path == b['data_samples'].img_path == paths[i]
        assert a['data_samples'].ori_shape == (96, 96)
        with Image.open(paths[i]) as f:
            full = f.convert('RGB')
        np.testing.assert_array_equal(a['inputs'][0].permute(1, 2, 0).numpy(), np.array(
            full.resize((48, 48), Image.Resampling.BICUBIC)))
        np.testing.assert_array_equal(a['inputs'][1].permute(1, 2, 0).numpy(), np.array(
            full.resize((24, 24), Image.Resampling.LANCZOS)))
        for x, y in zip(a['inputs'][:2], b['inputs'][:2]):
            assert torch.equal(x, y)
    # With random augmentation the two datasets still agree sample by sample.
    with DefaultScope.overwrite_default_scope('mmbeit'):
        imagenet_aug = ROOT_DATASETS.build(dict(
            type='mmpretrain.ImageNet', _scope_='mmpretrain', data_root=root, split='train',
            pipeline=mim_pipeline('mmbeit.', img_size=32, target_size=16)))
    folder_aug = UnlabeledImageFolder(data_root=root, data_prefix='train',
                                      pipeline=mim_pipeline(img_size=32, target_size=16))
    torch.manual_seed(3)
    np.random.seed(3)
    a = imagenet_aug[5]
    torch.manual_seed(3)
    np.random.seed(3)
    b = folder_aug[index[paths[5]]]
    assert all(torch.equal(x, y) for x, y in zip(a['inputs'], b['inputs']))
    assert [tuple(x.shape) for x in a['inputs']] == [(3, 32, 32), (3, 16, 16), (64,)]
