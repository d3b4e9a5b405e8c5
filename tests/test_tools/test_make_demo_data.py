"""The demo-data generator: deterministic, and readable by the real dataset readers."""
import hashlib
import json
import shutil

import cv2
import numpy as np
import pytest
from _helpers import ROOT, run_tool

TOOL = 'tools/misc/make_demo_data.py'

SMALL = ['--train-per-class', '3', '--val-per-class', '1', '--seg-train', '3',
         '--seg-val', '2', '--coco-train', '3', '--coco-val', '2']

# The ImageNet and ADE20K sets that SMALL writes with seed 0, as the generator wrote them
# before it had a COCO set (commit 888a64f): adding a layout must not change the others
# (the demo numbers in the README were measured on them). See combined_digest. It pins
# opencv's encoders too (requirements/runtime.txt pins opencv-python).
OLD_SETS_DIGEST = 'da2f549182848611a36146afc54759b24f7f118299f62a921997b8eea2accab3'


def digest(folder):
    out = {}
    for path in sorted(p for p in folder.rglob('*') if p.is_file()):
        out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def combined_digest(folder, subfolders):
    """One sha256 over the relative names and contents of the files under `subfolders`."""
    h = hashlib.sha256()
    paths = sorted(p for sub in subfolders for p in (folder / sub).rglob('*') if p.is_file())
    for path in paths:
        h.update(str(path.relative_to(folder)).encode() + b'\0')
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def load_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location('make_demo_data', f'{ROOT}/{TOOL}')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'a', *SMALL])
    run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'b', *SMALL])
    run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'c', '--seed', '1', *SMALL])
    a, b, c = (digest(tmp_path / x) for x in 'abc')
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(('.png', '.jpg'))]
    assert len(images) == 8 * 4 + 5 * 2 + 5
    assert all(a[k] != c[k] for k in images)
    assert {'coco/annotations/instances_train.json',
            'coco/annotations/instances_val.json'} <= a.keys()
    assert combined_digest(tmp_path / 'a', ['imagenet', 'ade20k']) == OLD_SETS_DIGEST
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a', 'b', 'c']  # no temp folder


def test_existing_output_is_kept_unless_forced(tmp_path):
    run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'd', *SMALL])
    marker = tmp_path / 'd' / 'mine.txt'
    marker.write_text('user data')
    before = digest(tmp_path / 'd')
    out = run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'd', '--seed', '1',
                    *SMALL])
    assert digest(tmp_path / 'd') == before  # not one file rewritten (another seed asked)
    assert str(tmp_path / 'd') in out.stdout and '--force' in out.stdout  # what and the fix
    # a folder from before a layout existed (the COCO set came later): only it is added,
    # the same bytes a fresh run writes, and nothing else is touched
    shutil.rmtree(tmp_path / 'd' / 'coco')
    out = run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'd', *SMALL])
    assert 'added coco' in out.stdout
    assert digest(tmp_path / 'd') == before
    run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'd', '--force', *SMALL])
    assert not marker.exists() and (tmp_path / 'd' / 'imagenet' / 'meta' / 'val.txt').exists()


def test_interrupted_forced_run_keeps_the_old_folder(tmp_path, monkeypatch):
    """--force replaces the folder only once the new one is complete: a failure half-way
    leaves the old data and no temporary folder."""
    tool = load_tool()
    run_tool([TOOL, '--out', tmp_path / 'd', *SMALL])
    before = digest(tmp_path / 'd')

    def fail(*args):
        raise OSError('disk full')

    monkeypatch.setattr(tool, 'make_ade20k', fail)
    with pytest.raises(OSError, match='disk full'):
        tool.main(['--out', str(tmp_path / 'd'), '--force', *SMALL])
    assert digest(tmp_path / 'd') == before
    assert [p.name for p in tmp_path.iterdir()] == ['d']


def test_imagenet_layout_reads_with_mmpretrain(demo_data):
    from mmpretrain.datasets import ImageNet
    root = demo_data / 'imagenet'
    ds = ImageNet(data_root=str(root), split='train',
                  metainfo=dict(classes=str(root / 'meta' / 'classes.txt')))
    assert len(ds) == 8 * 8
    assert list(ds.CLASSES[:3]) == ['circle', 'square', 'triangle']
    labels = [ds.get_data_info(i)['gt_label'] for i in range(len(ds))]
    assert np.bincount(labels).tolist() == [8] * 8
    info = ds.get_data_info(0)
    assert info['img_path'].endswith('train/circle/circle_0000.png')
    val = ImageNet(data_root=str(root), split='val',
                   metainfo=dict(classes=str(root / 'meta' / 'classes.txt')))
    assert len(val) == 16


def test_ade20k_layout_reads_with_mmseg(demo_data):
    # mmseg's ADE20KDataset only accepts subsets of ADE's 150 classes (and remaps their
    # ids), so data with its own classes in the ADE20K layout is read with BaseSegDataset.
    from mmseg.datasets import BaseSegDataset
    root = demo_data / 'ade20k'
    classes = (root / 'meta' / 'classes.txt').read_text().split()
    ds = BaseSegDataset(
        data_root=str(root), metainfo=dict(classes=classes), img_suffix='.jpg',
        seg_map_suffix='.png', reduce_zero_label=True,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=[dict(type='mmseg.LoadImageFromFile'),
                  dict(type='mmseg.LoadAnnotations', reduce_zero_label=True)])
    assert len(ds) == 8 and len(classes) == 8
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        seg = item['gt_seg_map']
        assert item['img'].shape[:2] == seg.shape == (128, 128)
        seen |= set(np.unique(seg).tolist())
    # 0 (ignore) became 255; wall=1 -> 0, floor=2 -> 1; shapes 3..8 -> 2..7
    assert 255 in seen and {0, 1} <= seen and seen <= set(range(8)) | {255}
    assert len(seen - {0, 1, 255}) >= 2


def rle_decode(rle):
    """COCO uncompressed RLE -> [H, W] bool (runs over column-major pixels, zeros first)."""
    h, w = rle['size']
    values = np.arange(len(rle['counts'])) % 2
    flat = np.repeat(values, rle['counts']).astype(bool)
    assert flat.size == h * w, f'RLE counts sum to {flat.size}, not {h} x {w}'
    return flat.reshape(w, h).T


@pytest.fixture(scope='module')
def coco_run(tmp_path_factory):
    """make_coco for a few images with every _paint call recorded: the mask handed to it,
    the texture, and the image right after it."""
    tool = load_tool()
    out = tmp_path_factory.mktemp('coco') / 'coco'
    paints = []
    original = tool._paint

    def recording_paint(img, mask, rng, texture='solid'):
        original(img, mask, rng, texture)
        paints.append((img, mask.copy(), texture, img.copy()))

    tool._paint = recording_paint
    tool.make_coco(str(out), np.random.default_rng([0, 3]), {'train': 6, 'val': 3}, 128)
    tool._paint = original
    return tool, out, paints


def test_coco_json_is_valid_coco(coco_run):
    tool, out, _ = coco_run
    for split, n in (('train', 6), ('val', 3)):
        data = json.loads((out / 'annotations' / f'instances_{split}.json').read_text())
        assert {'images', 'annotations', 'categories'} <= data.keys()
        assert [c['name'] for c in data['categories']] == list(tool.SHAPES)
        for c in data['categories']:
            assert c.keys() == {'id', 'name', 'supercategory'}
        for im in data['images']:
            assert im.keys() == {'id', 'file_name', 'width', 'height'}
            assert cv2.imread(str(out / split / im['file_name'])).shape == (
                im['height'], im['width'], 3)
        for a in data['annotations']:
            assert a.keys() == {'id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd',
                                'segmentation'}
            assert a['iscrowd'] == 0 and a['segmentation']['size'] == [128, 128]
        image_ids = [im['id'] for im in data['images']]
        ann_ids = [a['id'] for a in data['annotations']]
        cat_ids = [c['id'] for c in data['categories']]
        for ids in (image_ids, ann_ids, cat_ids):
            assert len(set(ids)) == len(ids) and min(ids) >= 1  # COCOeval: id 0 = no match
        assert len(image_ids) == n
        assert {a['image_id'] for a in data['annotations']} == set(image_ids)  # none empty
        assert {a['category_id'] for a in data['annotations']} <= set(cat_ids)
        per_image = np.bincount([a['image_id'] for a in data['annotations']])[1:]
        assert per_image.min() >= 2 and per_image.max() <= 5


def test_coco_masks_are_the_painted_pixels(coco_run):
    """Each instance's RLE is exactly what was painted for it minus what later shapes
    painted over; bbox is its tight box, area its pixel count, the class its texture's,
    and the PNG holds the painted pixels."""
    tool, out, paints = coco_run
    by_image = {}
    for img, mask, texture, after in paints:
        by_image.setdefault(id(img), []).append((mask > 0, texture, after))
    painted = list(by_image.values())
    occluded = 0
    for split, first in (('train', 0), ('val', 6)):
        data = json.loads((out / 'annotations' / f'instances_{split}.json').read_text())
        for im in data['images']:
            record = painted[first + im['id'] - 1]
            anns = sorted((a for a in data['annotations'] if a['image_id'] == im['id']),
                          key=lambda a: a['id'])
            assert len(anns) == len(record)
            on_top = np.zeros((128, 128), bool)
            for ann, (mask, texture, _) in zip(anns[::-1], record[::-1]):
                visible = mask & ~on_top
                on_top |= mask
                occluded += int(visible.sum() < mask.sum())
                decoded = rle_decode(ann['segmentation'])
                np.testing.assert_array_equal(decoded, visible)
                assert ann['area'] == visible.sum() >= 0.5 * mask.sum()
                ys, xs = np.nonzero(visible)
                assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                       ys.max() - ys.min() + 1]
                assert tool.TEXTURES[ann['category_id'] - 1] == texture
            written = cv2.imread(str(out / split / im['file_name']))[..., ::-1]
            np.testing.assert_array_equal(written, record[-1][2].astype(np.uint8))
    assert occluded >= 1  # the occlusion path is exercised with these seeds


def test_coco_masks_read_the_same_with_pycocotools(coco_run):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    _, out, _ = coco_run
    coco = COCO(str(out / 'annotations' / 'instances_train.json'))
    assert len(coco.getImgIds()) == 6 and len(coco.getCatIds()) == 8
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        np.testing.assert_array_equal(mask.astype(bool), rle_decode(ann['segmentation']))
        rle = coco.annToRLE(ann)
        assert mask_utils.area(rle) == ann['area']
        assert mask_utils.toBbox(rle).tolist() == ann['bbox']


def test_coco_layout_reads_with_mmdet(demo_data):
    from mmdet.datasets import CocoDataset
    root = demo_data / 'coco'
    classes = [c['name'] for c in json.loads(
        (root / 'annotations' / 'instances_val.json').read_text())['categories']]
    ds = CocoDataset(data_root=str(root), ann_file='annotations/instances_val.json',
                     data_prefix=dict(img='val/'), metainfo=dict(classes=classes),
                     pipeline=[dict(type='mmdet.LoadImageFromFile'),
                               dict(type='mmdet.LoadAnnotations', with_mask=True)])
    assert len(ds) >= 1
    item = ds[0]
    assert item['img'].shape == (128, 128, 3)
    masks = item['gt_masks'].to_ndarray()
    assert masks.shape[0] == len(item['gt_bboxes']) >= 2
    # mmdet boxes are x1, y1, x2, y2 with x2 = x + w: the mask's box again
    for m, box in zip(masks, item['gt_bboxes'].numpy()):
        ys, xs = np.nonzero(m)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_coco_layouts_keep_half_of_each_shape_visible(coco_run):
    tool = coco_run[0]
    rng = np.random.default_rng(7)
    fractions = []
    for _ in range(150):
        layout = tool._coco_layout(rng, 128)
        assert 2 <= len(layout) <= 5
        on_top = np.zeros((128, 128), bool)
        for _k, mask in layout[::-1]:
            visible = (mask > 0) & ~on_top
            on_top |= mask > 0
            assert visible.sum() >= tool.MIN_PIXELS
            fractions.append(visible.sum() / mask.sum())
    assert min(fractions) >= 0.5 and np.mean(np.array(fractions) < 1) > 0.05
