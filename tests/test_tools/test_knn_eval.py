"""tools/analysis_tools/knn_eval.py: kNN / linear-probe table of any checkpoint."""
import importlib.util
import json
import os
import re

import numpy as np
import pytest
import torch
from _helpers import ROOT, randomize_, tiny, tool_main
from PIL import Image

from mmbeit.evaluation import fit_linear_probe, knn_scores, topk_correct

TOOL = f'{ROOT}/tools/analysis_tools/knn_eval.py'
pytestmark = pytest.mark.usefixtures('one_thread')
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def _tool():
    spec = importlib.util.spec_from_file_location('knn_eval', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pretrain_like(seed=0):
    """A tiny backbone with the parts of our pretraining checkpoints (shared table, mask
    token, final norm), random weights."""
    return randomize_(tiny(rel_pos_bias='shared', use_mask_token=True, final_norm=True,
                           out_type='raw'), seed).eval()


def _save(path, state_dict):
    torch.save(state_dict, path)
    return path


def _files(split_dir, per_class):
    classes = sorted(os.listdir(split_dir))
    files, labels = [], []
    for i, c in enumerate(classes):
        names = sorted(os.listdir(os.path.join(split_dir, c)))[:per_class]
        files += [os.path.join(split_dir, c, n) for n in names]
        labels += [i] * len(names)
    return files, torch.tensor(labels)


def _image(path, size=32):
    """The evaluation transform written out: square demo images -> floor(32 / 0.875) = 36
    bicubic, centre crop 32 (offset 2), ImageNet normalisation."""
    img = Image.open(path).convert('RGB')
    assert img.size[0] == img.size[1]
    img = img.resize((36, 36), Image.BICUBIC).crop((2, 2, 34, 34))
    x = torch.from_numpy(np.asarray(img, np.float32).copy()).permute(2, 0, 1)
    return (x - MEAN) / STD


@torch.no_grad()
def _direct_features(model, files):
    x = torch.stack([_image(f) for f in files])
    s0, s1 = model.forward_layers(x, [0, 1])
    # mean patch token; the last block gets the final norm first
    return [s0[:, 1:].mean(1), model.norm(s1)[:, 1:].mean(1)]


def test_table_equals_a_direct_computation(demo_data, tmp_path, capsys):
    model = _pretrain_like()
    sd = {'backbone.' + k: v for k, v in model.state_dict().items()}
    sd['head.lm_head.weight'] = torch.zeros(10, 32)  # other parts are ignored
    ckpt = _save(tmp_path / 'pretrain.pth', {'meta': {}, 'state_dict': sd})
    out = tmp_path / 'res' / 'knn.json'
    args = ['--layers', 'all', '--feature', 'avg', '--k', '5', '--max-per-class', '4',
            '--probe']
    assert tool_main(TOOL, ckpt, demo_data / 'imagenet', *args, '--out', out) == ''
    printed = capsys.readouterr()
    res = json.loads(out.read_text())
    assert _tool().format_table(res) in printed.out  # the printed table is the file's
    # progress on stderr only: the final count and rate of each split
    for split, n in (('train', 32), ('val', 16)):
        assert re.search(rf'^knn_eval {split}: {n}/{n} images in [\d.]+ s \([\d.]+ images/s\)$',
                         printed.err, re.M), printed.err
    assert 'images/s' not in printed.out
    assert res['backbone']['arch'] == dict(embed_dims=32, num_layers=2, num_heads=4,
                                           feedforward_channels=64)
    assert res['backbone']['rel_pos_bias'] == 'shared' and res['img_size'] == [32, 32]

    train, yb = _files(demo_data / 'imagenet' / 'train', 4)
    val, yq = _files(demo_data / 'imagenet' / 'val', 4)
    assert (res['num_train'], res['num_val']) == (len(train), len(val)) == (32, 16)
    assert res['classes'] == sorted(os.listdir(demo_data / 'imagenet' / 'train'))
    bank, queries = _direct_features(model, train), _direct_features(model, val)
    assert [r['block'] for r in res['rows']] == [0, 1]
    for row, xb, xq in zip(res['rows'], bank, queries):
        hits = topk_correct(knn_scores(xb, yb, xq, 8, k=5, temperature=0.07), yq, (1, 5))
        assert row['knn_top1'] == 100 * hits[1] / 16
        assert row['knn_top5'] == 100 * hits[5] / 16
        probe = fit_linear_probe(xb, yb, 8)
        assert row['probe_top1'] == 100 * float((probe.predict(xq) == yq).double().mean())

    # the same weights as a bare unilm-layout file (index buffers, a classifier head),
    # converted in memory with --src unilm: the same table
    bare = dict(model.state_dict())
    bare['rel_pos_bias.relative_position_index'] = torch.zeros(17 * 17, dtype=torch.long)
    bare['head.weight'], bare['head.bias'] = torch.zeros(3, 32), torch.zeros(3)
    bare_ckpt = _save(tmp_path / 'unilm.pth', {'model': bare})
    out2 = tmp_path / 'knn2.json'
    assert tool_main(TOOL, bare_ckpt, demo_data / 'imagenet', *args, '--src', 'unilm',
                     '--out', out2) == ''
    assert json.loads(out2.read_text())['rows'] == res['rows']


def test_errors_name_the_problem_and_the_fix(demo_data, tmp_path, capsys):
    data = tmp_path / 'data'
    for split, classes in (('train', ('a', 'b')), ('val', ('a', 'c'))):
        for c in classes:
            (data / split / c).mkdir(parents=True)
            Image.new('RGB', (40, 40), (10, 200, 30)).save(data / split / c / '0.png')
    ckpt = _save(tmp_path / 'ckpt.pth', _pretrain_like().state_dict())
    assert tool_main(TOOL, ckpt, data) == (
        f"knn_eval: val class(es) ['c'] of {data}/val are not classes of {data}/train, "
        "whose class folders define the labels (['a', 'b']): add train images of them or "
        'remove them from val')

    # no relative position table: the head count cannot be read off the state dict
    no_table = tiny(rel_pos_bias=None, use_abs_pos_emb=True, out_type='raw')
    plain = _save(tmp_path / 'plain.pth', {'state_dict': {
        'backbone.' + k: v for k, v in no_table.state_dict().items()}})
    imagenet = demo_data / 'imagenet'
    msg = tool_main(TOOL, plain, imagenet)
    assert msg.startswith('knn_eval: cannot infer num_heads: the state dict has no relative '
                          'position table')
    assert msg.endswith('(knn_eval.py: --num-heads N; N divides embed_dims=32)')
    out = tmp_path / 'plain.json'
    assert tool_main(TOOL, plain, imagenet, '--num-heads', 4, '--max-per-class', 1,
                     '--out', out) == ''
    assert json.loads(out.read_text())['backbone']['arch']['num_heads'] == 4

    # --layers: not indices (argparse, exit 2), out of range (after the model is built)
    assert tool_main(TOOL, ckpt, imagenet, '--layers', '0,x') == '2'
    assert ("argument --layers: '0,x' is not 'all' or comma-separated block indices "
            '(e.g. -1 or 0,3,-1)') in capsys.readouterr().err
    assert tool_main(TOOL, ckpt, imagenet, '--layers', '1,2,-3') == (
        'knn_eval: --layers 2,-3: out of range for a 2-block backbone; give indices from -2 '
        'to 1, or all')
    # a checkpoint of another layout without --src
    assert tool_main(TOOL, _save(tmp_path / 'hf.pth', {'beit.embeddings.cls_token':
                                                       torch.zeros(1, 1, 32)}),
                     imagenet).startswith('knn_eval: not a BEiTViT state dict: no 4-d '
                                          "patch_embed.proj.weight (first keys: "
                                          "['beit.embeddings.cls_token'])")
