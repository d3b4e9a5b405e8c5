"""tools/analysis_tools/patch_probe.py: linear probe of patch features on a seg dataset."""
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from _helpers import ROOT, tool_main
from PIL import Image

TOOL = f'{ROOT}/tools/analysis_tools/patch_probe.py'


def _module():
    spec = importlib.util.spec_from_file_location('patch_probe', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_patch_labels_purity_and_ignored_pixels():
    pp = _module()
    ig = pp.IGNORE
    # one 4x8 map, patches of 4 -> two patches
    seg = torch.tensor([[[0, 0, 0, 0, 1, 1, 1, 1],
                         [0, 0, 0, 0, 1, 1, 1, 1],
                         [0, 0, 0, 1, 1, 1, ig, ig],
                         [0, 0, 0, 1, 1, ig, ig, ig]]])
    # left patch: 14 / 16 class 0 = 0.875; right: 11 / 16 class 1 = 0.6875 (ignored pixels
    # count against the class)
    assert pp.patch_labels(seg, 4, 0.75, 2).tolist() == [[[0, -1]]]
    assert pp.patch_labels(seg, 4, 0.6875, 2).tolist() == [[[0, 1]]]
    assert pp.patch_labels(seg, 4, 0.9, 2).tolist() == [[[-1, -1]]]
    with pytest.raises(ValueError, match='label maps 4x8 are not divisible by patch_size=3'):
        pp.patch_labels(seg, 3, 0.75, 2)


def test_probe_separates_separable_classes_whatever_their_counts():
    pp = _module()
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4., 0.], [0., 4.], [-4., -4.]])
    counts = [400, 40, 8]  # imbalanced, as wall / floor against small objects

    def sample(n_per):
        x = torch.cat([c + torch.randn(n, 2, generator=g) * 0.5
                       for c, n in zip(centres, n_per)])
        y = torch.cat([torch.full((n, ), k) for k, n in enumerate(n_per)])
        return x, y

    xt, yt = sample(counts)
    xv, yv = sample([50, 50, 50])
    # a useless second feature set: noise
    res = pp.probe(([xt, torch.randn(len(xt), 3, generator=g)], yt),
                   ([xv, torch.randn(len(xv), 3, generator=g)], yv),
                   ['good', 'noise'], 4, l2=1e-3, max_iter=100)
    assert list(res) == ['good', 'noise', 'all']
    assert res['good']['per_class'][:3] == [100.0, 100.0, 100.0]
    assert math.isnan(res['good']['per_class'][3])  # class 3 absent from val
    assert res['good']['mean'] == 100.0
    assert res['all']['mean'] > 95
    assert res['noise']['mean'] < 70


def test_class_balance_gives_rare_classes_equal_weight():
    """Two overlapping classes, 20 : 1. Balanced, the boundary sits half-way, so the rare
    class is named about as often as the common one; an unweighted fit would call almost
    everything the common class."""
    pp = _module()
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(2000, 1, generator=g) - 1, torch.randn(100, 1, generator=g) + 1])
    y = torch.cat([torch.zeros(2000, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    w, b, mean, std = pp.fit_probe(x, y, 2, l2=0.)
    # the decision boundary (logit difference 0), back in the original units
    boundary = (float(mean[0]) - float(b[1] - b[0]) / float(w[1, 0] - w[0, 0]) * float(std[0]))
    assert abs(boundary) < 0.15, boundary


def _write_dataset(root, n_train, n_val, size=32):
    """Scenes of flat colour blocks (8 x 8 aligned): class k (1..3 in the files, 0 ignored)
    is drawn in colour k, so a linear probe of any reasonable features names it."""
    colours = {1: (220, 30, 30), 2: (30, 220, 30), 3: (30, 30, 220)}
    rng = np.random.default_rng(0)
    counts = {}
    for split, n in (('training', n_train), ('validation', n_val)):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'annotations' / split).mkdir(parents=True)
        cnt = np.zeros(3, np.int64)
        for i in range(n):
            lab = rng.integers(0, 4, (size // 8, size // 8))
            cnt += np.bincount(lab.flatten(), minlength=4)[1:]
            seg = np.kron(lab, np.ones((8, 8), np.int64)).astype(np.uint8)
            img = np.zeros((size, size, 3), np.uint8) + 128
            for k, c in colours.items():
                img[seg == k] = c
            Image.fromarray(img).save(root / 'images' / split / f'{i}.png')
            Image.fromarray(seg).save(root / 'annotations' / split / f'{i}.png')
        counts[split] = cnt.tolist()
    return counts


def _write_config(path, data_root):
    path.write_text(f"""
_ds = dict(type='mmseg.BaseSegDataset', data_root={str(data_root)!r},
           metainfo=dict(classes=('red', 'green', 'blue')), img_suffix='.png',
           seg_map_suffix='.png', reduce_zero_label=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(type='mmbeit.BEiTViT',
                  arch=dict(embed_dims=32, num_layers=2, num_heads=4,
                            feedforward_channels=64),
                  img_size=32, patch_size=8, rel_pos_bias='per_layer',
                  out_indices=[0, 1], out_type='featmap'))
train_dataloader = dict(dataset=dict(**_ds, data_prefix=dict(
    img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(dataset=dict(**_ds, data_prefix=dict(
    img_path='images/validation', seg_map_path='annotations/validation')))
""")


def test_tool_end_to_end_random_init_and_checkpoint(tmp_path, capsys):
    counts = _write_dataset(tmp_path / 'data', 6, 4)
    cfg = tmp_path / 'probe_cfg.py'
    _write_config(cfg, tmp_path / 'data')
    out = tmp_path / 'res' / 'probe.json'
    assert tool_main(TOOL, cfg, '--out', out) == ''
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res['checkpoint'] is None  # no --checkpoint: the random initialisation
    assert res['classes'] == ['red', 'green', 'blue']
    assert _module().format_table(res) in printed  # the table printed is the file's
    # every aligned block is pure, so every labelled block is a probe sample
    assert res['patches'] == {'train': counts['training'], 'val': counts['validation']}
    assert list(res['results']) == ['block 0', 'block 1', 'all']
    assert res['results']['all']['mean'] == 100.0

    # the same backbone's weights as a checkpoint under 'backbone.' give the same features,
    # hence the same probe, whatever --seed says
    pp = _module()
    from mmengine.config import Config
    model = pp.build_backbone(Config.fromfile(str(cfg)), seed=0)
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in model.state_dict().items()}},
               ckpt)
    out2 = tmp_path / 'probe2.json'
    assert tool_main(TOOL, cfg, '--checkpoint', ckpt, '--seed', 5, '--out', out2) == ''
    assert json.loads(out2.read_text())['results'] == res['results']


def test_tool_errors_name_the_problem(tmp_path, capsys):
    cfg = tmp_path / 'probe_cfg.py'
    _write_config(cfg, tmp_path / 'missing')
    msg = tool_main(TOOL, cfg)
    assert msg.startswith(f'patch_probe: the train image folder {tmp_path}/missing/images/'
                          'training of the config does not exist')
    _write_dataset(tmp_path / 'data', 1, 1)
    (tmp_path / 'data' / 'annotations' / 'validation' / '0.png').unlink()
    _write_config(cfg, tmp_path / 'data')
    assert tool_main(TOOL, cfg).endswith('validation/0.png has no label map '
                                         f'{tmp_path}/data/annotations/validation/0.png')
    assert tool_main(TOOL, cfg, '--purity', '0') == '2'
    assert '--purity 0.0 must be in (0, 1]' in capsys.readouterr().err
