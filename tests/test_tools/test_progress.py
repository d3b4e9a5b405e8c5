"""Progress on the tools that walk image folders: mmbeit.engine.progress.ProgressBar on a
fake clock, tools/misc/fit_hog_tokenizer.py's bar, and tools/infer.py on a folder (every
image gets the report of a single-image run; overlays named after the files; the bar on
stderr). tokenize_images.py's bar is checked in its own tool tests
(tests/test_tools/test_tokenizer_tools.py).

The tools run in this process (``tool_main``), the images come from ``demo_data``.
"""
import io
import os
import random
import re
import shutil

import numpy as np
import pytest
import torch
from _helpers import ROOT, cli_options, tool_main
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmbeit.checkpoint import read_checkpoint
from mmbeit.engine.progress import ProgressBar

pytestmark = pytest.mark.usefixtures('one_thread')

INFER = f'{ROOT}/tools/infer.py'
FIT_HOG = f'{ROOT}/tools/misc/fit_hog_tokenizer.py'
CLS_CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_scratch-30e_demo-64.py'
SEG_CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_upernet-scratch-1k_demo-ade-128.py'
HOG_CFG = f'{ROOT}/configs/demo/beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py'
FINAL = r'(\d+)/(\d+) images in [\d.]+ s \([\d.]+ images/s\)$'


# ----------------------------------------------------------------------------- the bar

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_into_a_file_writes_a_line_per_interval_and_a_final_line():
    clock, out = Clock(), io.StringIO()
    with ProgressBar(10, 'job', file=out, enabled=True, log_interval=30, clock=clock) as bar:
        for _ in range(4):
            clock.now += 5
            bar.update()
        assert out.getvalue() == ''  # 20 s: no line yet
        clock.now += 20
        bar.update(2)                 # 40 s, 6 of 10 done: 0.15 images/s, 4 left
        assert out.getvalue() == ('job: [############........] 6/10 images, '
                                  '0.1 images/s, ETA 27 s\n')
        clock.now += 10
        bar.update(4)                 # done: the final line only, at close
    assert out.getvalue().splitlines()[1:] == ['job: 10/10 images in 50.0 s (0.2 images/s)']
    assert bar.rate() == pytest.approx(0.2)


def test_bar_on_a_terminal_redraws_one_line():
    clock, out = Clock(), Terminal()
    bar = ProgressBar(3, 'tok', unit='views', file=out, enabled=True, min_interval=0.2,
                      clock=clock)
    clock.now += 1
    bar.update()
    clock.now += 0.1
    bar.update()                      # within min_interval: not drawn
    bar.close()
    bar.close()                       # once only
    first = 'tok: [######..............] 1/3 views, 1.0 views/s, ETA 2 s'
    final = 'tok: 2/3 views in 1.1 s (1.8 views/s)'  # the count even when stopped early
    # the final line overwrites the first and blanks the rest of it
    assert out.getvalue() == f'\r{first}\r{final}{" " * (len(first) - len(final))}\n'


def test_bar_disabled_writes_nothing_and_bad_input_is_named():
    out = io.StringIO()
    with ProgressBar(2, 'x', file=out, enabled=False) as bar:
        bar.update(2)
    assert out.getvalue() == '' and bar.done == 2
    with pytest.raises(ValueError, match=r'total must be an int >= 0 .*images.*got -1'):
        ProgressBar(-1, 'x')
    with pytest.raises(ValueError, match='n must be >= 0, got -2'):
        ProgressBar(1, 'x', file=out).update(-2)


# ----------------------------------------------------------------------------- fit_hog

@pytest.fixture
def own_scope_and_rngs(monkeypatch):
    """The tool sets a default scope and seeds the global RNGs: keep both to the test."""
    monkeypatch.setattr(DefaultScope, '_instance_dict', DefaultScope._instance_dict.copy())
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


@pytest.mark.usefixtures('own_scope_and_rngs')
def test_fit_hog_tokenizer_reports_views_on_stderr(tmp_path, demo_data, capfd):
    cfg = tmp_path / 'hog.py'
    cfg.write_text(f"""_base_ = '{HOG_CFG}'
_pipe = {{{{_base_.train_pipeline}}}}
train_dataloader = dict(dataset=dict(dataset=dict(
    _delete_=True, type='UnlabeledImageFolder', data_root='{demo_data}/imagenet/val',
    pipeline=_pipe)))
""")
    out = tmp_path / 'hog.pth'
    assert tool_main(FIT_HOG, cfg, '--out', out, '--views', '2', '--iters', '2') == ''
    std = capfd.readouterr()
    final = re.findall(r'^\[fit_hog_tokenizer\] 16 images x 2 views: ' + FINAL, std.err, re.M)
    assert final == [('32', '32')]
    assert 'images/s' not in std.out
    assert re.search(r'16 images x 2 views = 32 views, 2048 patches', std.out)
    meta = read_checkpoint(out)['meta']  # the codebook file, as before
    assert (meta['images'], meta['views']) == (16, 2)


# ----------------------------------------------------------------------------- infer.py

_ARCH = dict(embed_dims=16, num_heads=2, feedforward_channels=32)
TINY = {
    CLS_CFG: {'model.backbone.arch': dict(_ARCH, num_layers=1), 'model.head.in_channels': 16},
    # Feature2Pyramid takes four feature maps: four narrow layers
    SEG_CFG: {'model.backbone.arch': dict(_ARCH, num_layers=4), 'model.neck.embed_dim': 16,
              'model.decode_head.in_channels': [16, 16, 16, 16],
              'model.decode_head.channels': 16, 'model.auxiliary_head.in_channels': 16,
              'model.auxiliary_head.channels': 8},
}


def save_model(config, path):
    """The config's model made tiny, initialised, written as a runner would."""
    import mmbeit.models  # noqa: F401
    from mmbeit.checkpoint import save_checkpoint
    from mmbeit.engine.runtime import replace_sync_bn
    from mmbeit.registry import MODELS
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(TINY[config])
    replace_sync_bn(cfg.model)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    model.init_weights()
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {}}, str(path))
    return path


def blocks(stdout):
    """{image path: its report lines} of a folder run (each report starts 'image: P')."""
    found, current = {}, None
    for line in stdout.splitlines():
        if line.startswith('image: '):
            current = found.setdefault(line[len('image: '):], [])
        elif current is not None and line:
            current.append(line)
    return found


def run_infer(capfd, config, ckpt, image, *args):
    msg = tool_main(INFER, config, ckpt, image, *args, '--cfg-options', *cli_options(TINY[config]))
    std = capfd.readouterr()
    assert msg == '', msg
    return std


def test_infer_on_a_folder_classifies_every_image_as_alone(tmp_path, demo_data, capfd):
    ckpt = save_model(CLS_CFG, tmp_path / 'cls.pth')
    folder = f'{demo_data}/imagenet/val'           # 8 class folders x 2 images
    std = run_infer(capfd, CLS_CFG, ckpt, folder, '--topk', '2')
    assert f'folder: {folder} (16 images)' in std.out.splitlines()
    reports = blocks(std.out)
    assert len(reports) == 16 and all(len(r) == 5 for r in reports.values())
    assert re.findall(r'^infer\.py: ' + FINAL, std.err, re.M) == [('16', '16')]
    assert 'images/s' not in std.out
    one = sorted(reports)[5]
    alone = run_infer(capfd, CLS_CFG, ckpt, one, '--topk', '2')
    lines = alone.out.splitlines()
    start = lines.index(f'image: {one}')
    assert lines[start + 1].startswith('model: ')
    assert lines[start + 2:] == reports[one]
    assert 'images/s' not in alone.err                   # one image: no bar


def test_infer_on_a_folder_writes_an_overlay_per_image(tmp_path, demo_data, capfd):
    ckpt = save_model(SEG_CFG, tmp_path / 'seg.pth')
    folder = tmp_path / 'imgs'
    shutil.copytree(f'{demo_data}/ade20k/images/validation', folder / 'sub')
    (folder / 'sub' / '.hidden.jpg').write_bytes(b'')  # hidden files are skipped
    names = sorted(n[:-4] for n in os.listdir(folder / 'sub') if not n.startswith('.'))
    out = tmp_path / 'overlays'
    std = run_infer(capfd, SEG_CFG, ckpt, folder, '--out', out)
    assert sorted(os.listdir(out / 'sub')) == [f'{n}.png' for n in names]  # nothing else
    assert re.findall(r'^infer\.py: ' + FINAL, std.err, re.M) == [('4', '4')]
    first = f'{folder}/sub/{names[0]}.jpg'
    run_infer(capfd, SEG_CFG, ckpt, first, '--out', tmp_path / 'alone.png')
    assert (tmp_path / 'alone.png').read_bytes() == (out / 'sub' / f'{names[0]}.png'
                                                     ).read_bytes()

    # existing overlays: refused before the model is built, nothing changes
    before = {n: (out / 'sub' / f'{n}.png').stat().st_mtime_ns for n in names}
    msg = tool_main(INFER, SEG_CFG, ckpt, folder, '--out', out)
    assert msg == (f"infer.py: '{out}/sub/{names[0]}.png' and 3 more already exists; "
                   f'pass --overwrite to replace it, or choose another --out')
    assert {n: (out / 'sub' / f'{n}.png').stat().st_mtime_ns for n in names} == before


def test_infer_folder_input_errors(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    cfg, ckpt = CLS_CFG, tmp_path / 'k.pth'
    ckpt.write_bytes(b'')
    assert tool_main(INFER, cfg, ckpt, empty) == (
        f"infer.py: no images (.jpg .jpeg .png .webp .bmp) under the folder '{empty}'")
    (empty / 'a.jpg').write_bytes(b'')
    (empty / 'a.png').write_bytes(b'')
    assert tool_main(INFER, cfg, ckpt, empty, '--out', tmp_path / 'o') == (
        f"infer.py: 'a.jpg' and 'a.png' would both write '{tmp_path}/o/a.png'; rename one "
        f'of them or run the tool on each separately')
    assert tool_main(INFER, cfg, ckpt, empty, '--out', tmp_path / 'o.png') == (
        f'infer.py: with a folder of images, --out names a folder for the overlays (one PNG '
        f"per image, named after it), got '{tmp_path}/o.png'")
    assert tool_main(INFER, cfg, ckpt, tmp_path / 'none') == (
        f"infer.py: image file '{tmp_path}/none' does not exist (give an image file or a "
        f'folder of images)')
