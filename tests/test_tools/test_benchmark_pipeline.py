"""tools/analysis_tools/benchmark_pipeline.py: the --smoke run prints a well-formed table,
its stage-by-stage run gives the same samples as the pipeline itself, bad configs are
refused with a message."""
import importlib.util
import json
import os
import os.path as osp
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import ROOT, tool_main

TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_pipeline.py')
pytestmark = pytest.mark.usefixtures('one_thread')


def load_tool():
    spec = importlib.util.spec_from_file_location('benchmark_pipeline', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_prints_the_table(tmp_path, capsys):
    out_json = tmp_path / 'bench.json'
    assert tool_main(TOOL, '--smoke', '--image-dir', tmp_path / 'imgs', '--json',
                     out_json) == ''
    lines = capsys.readouterr().out.splitlines()
    # the title names the config measured and its numbers: 4 images, 1 pass (--smoke)
    assert 'configs/_base_/datasets/imagenet_beitv2_pretrain.py' in lines[0]
    assert [int(x) for x in re.findall(r'\b(\d+) (?:JPEGs|passes)\b', lines[0])] == [4, 1]
    rows = {ln.split('|')[1].strip(): [c.strip() for c in ln.split('|')[2:-1]]
            for ln in lines if ln.startswith('| ') and not ln.startswith('| stage')}
    tool = load_tool()
    for stage in tool.STAGES + ('sum of the stages',):
        ref, ours = (float(c) for c in rows[stage])
        assert ref >= 0 and ours >= 0
    for stage in ('read bytes', 'decode', 'flip + crop + resize x2', 'pack'):
        assert all(float(c) > 0 for c in rows[stage]), stage
    speeds = rows['**img/s on one core**, all images']
    assert float(speeds[0]) > 0 and speeds[1].endswith('x)')
    cores = rows['cores per GPU at 2,400 img/s (all images)']
    assert float(cores[0]) == pytest.approx(2400 / float(speeds[0]), rel=0.05)
    summary = json.loads(out_json.read_text())
    assert summary['images'] == 4 and set(summary['median']) == {'reference', 'config'}
    assert sorted(p.name for p in (tmp_path / 'imgs').iterdir()) == [
        'astronaut_500x375.jpg', 'astronaut_800x600.jpg', 'camera_500x375.jpg',
        'camera_800x600.jpg']


@pytest.mark.parametrize('lazy', [False, True])
def test_staged_run_equals_the_pipeline(tmp_path, lazy):
    """The benchmark times the transforms' steps one by one; the sample must be the
    same as the pipeline's own (same seed)."""
    tool = load_tool()
    paths = tool.write_images(str(tmp_path), tool.SMOKE_SIZES, max_photos=2)
    # only the JPEGs (no temporary file), each a whole one; a second call rewrites nothing
    assert sorted(os.listdir(tmp_path)) == sorted(osp.basename(p) for p in paths)
    assert all(Path(p).read_bytes()[-2:] == b'\xff\xd9' for p in paths)  # JPEG end marker
    stamps = [os.stat(p).st_mtime_ns for p in paths]
    assert tool.write_images(str(tmp_path), tool.SMOKE_SIZES, max_photos=2) == paths
    assert [os.stat(p).st_mtime_ns for p in paths] == stamps
    pipeline = tool.build_pipeline(tool.DEFAULT_CONFIG)
    load = next(t for t in pipeline if type(t).__name__ == 'LoadImageRGB')
    load.lazy = lazy
    scales = set()
    for i, path in enumerate(paths * 2):
        torch.manual_seed(i)
        np.random.seed(i)
        results = dict(img_path=path)
        for t in pipeline:
            if type(t).__name__ == 'BEiTMaskedViews':
                before = dict(results)
            results = t(results)
        torch.manual_seed(i)
        np.random.seed(i)
        staged = tool.staged(pipeline, path, tool.Timer())
        assert all(torch.equal(a, b) for a, b in zip(results['inputs'], staged['inputs']))
        assert results['data_samples'].metainfo == staged['data_samples'].metainfo
        views = next(t for t in pipeline if type(t).__name__ == 'BEiTMaskedViews')
        torch.manual_seed(i)
        scales.add(views(before)['decode_scale'])
    assert scales == ({1, 2} if lazy else {1})   # both decode paths were timed


def test_bad_configs_are_refused(tmp_path, capsys):
    assert tool_main(TOOL, '--config', tmp_path / 'none.py', '--smoke') == '2'
    assert f'--config {tmp_path}/none.py: no such file' in capsys.readouterr().err
    cfg = tmp_path / 'model_only.py'
    cfg.write_text('model = dict()\n')
    msg = tool_main(TOOL, '--config', cfg, '--smoke', '--image-dir', tmp_path / 'imgs')
    assert msg == (f'benchmark_pipeline: {cfg} has no train_pipeline; give a pretraining '
                   'dataset config such as configs/_base_/datasets/imagenet_beitv2_pretrain.py')
