"""The demo-data generator: deterministic, and readable by the real dataset readers."""
import hashlib

import numpy as np
import pytest
from _helpers import ROOT, run_tool

TOOL = 'tools/misc/make_demo_data.py'

SMALL = ['--train-per-class', '3', '--val-per-class', '1', '--seg-train', '3',
         '--seg-val', '2']


def digest(folder):
    out = {}
    for path in sorted(p for p in folder.rglob('*') if p.is_file()):
        out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'a', *SMALL])
    run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'b', *SMALL])
    run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'c', '--seed', '1', *SMALL])
    a, b, c = (digest(tmp_path / x) for x in 'abc')
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(('.png', '.jpg'))]
    assert len(images) == 8 * 4 + 5 * 2
    assert all(a[k] != c[k] for k in images)
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
    run_tool(['tools/misc/make_demo_data.py', '--out', tmp_path / 'd', '--force', *SMALL])
    assert not marker.exists() and (tmp_path / 'd' / 'imagenet' / 'meta' / 'val.txt').exists()


def test_interrupted_forced_run_keeps_the_old_folder(tmp_path, monkeypatch):
    """--force replaces the folder only once the new one is complete: a failure half-way
    leaves the old data and no temporary folder."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('make_demo_data', f'{ROOT}/{TOOL}')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
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
