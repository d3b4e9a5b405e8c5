"""tools/train.py --tensorboard: a short real training run writes TensorBoard events whose
scalars equal those of scalars.json; the flag's config change; the error without the
tensorboard package.

The events are read back with tensorboard's own ``EventAccumulator`` (the real
``tensorboard`` package, an optional dependency that the test requirements install).
"""
import glob
import json
import os.path as osp
import sys

import pytest
from _helpers import ROOT, run_tool, tool_main
from mmengine.config import Config

DEMO_CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_scratch-30e_demo-64.py'
SEG_CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_upernet-scratch-1k_demo-ade-128.py'
TRAIN = f'{ROOT}/tools/train.py'


def write_config(tmp_path, data, max_iters=3):
    """The demo classifier made tiny, iteration-based, logging every iteration."""
    imagenet = f'{data}/imagenet'
    path = tmp_path / 'cfg.py'
    path.write_text(f'''
_base_ = '{DEMO_CFG}'
model = dict(
    backbone=dict(arch=dict(embed_dims=16, num_layers=1, num_heads=2,
                            feedforward_channels=32), drop_path_rate=0.0),
    head=dict(in_channels=16))
_data = dict(data_root='{imagenet}', metainfo=dict(classes='{imagenet}/meta/classes.txt'))
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=_data)
val_dataloader = dict(batch_size=16, num_workers=0, persistent_workers=False, dataset=_data)
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters},
                 val_interval={max_iters})
param_scheduler = [dict(type='CosineAnnealingLR', T_max={max_iters}, eta_min=1e-5,
                        by_epoch=False, begin=0, end={max_iters})]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=False, interval=1000, save_last=False))
log_processor = dict(by_epoch=False)
''')
    return path


def read_events(vis_dir):
    """{tag: {step: [values in write order]}} of the one events file in ``vis_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = glob.glob(osp.join(vis_dir, 'events.out.tfevents.*'))
    assert len(events) == 1, f'expected one events file in {vis_dir}, found {events}'
    acc = EventAccumulator(events[0])
    acc.Reload()
    out = {}
    for tag in acc.Tags()['scalars']:
        for event in acc.Scalars(tag):
            out.setdefault(tag, {}).setdefault(event.step, []).append(event.value)
    return out


@pytest.mark.slow  # a training run in a fresh process: 8 s of CPU, 12-20 s here
def test_train_writes_tensorboard_scalars_equal_to_scalars_json(tmp_path, demo_data):
    """Three logged iterations and one validation: the same numbers in both files; the
    validation at its iteration (the flag sets log_metric_by_epoch=False), not at 0."""
    cfg, work = write_config(tmp_path, demo_data), tmp_path / 'work'
    res = run_tool(['tools/train.py', cfg, '--work-dir', work, '--tensorboard'])
    assert 'log_metric_by_epoch=False' in res.stdout + res.stderr
    (vis_dir, ) = glob.glob(str(work / '*' / 'vis_data'))
    with open(osp.join(vis_dir, 'scalars.json')) as f:
        logged = [json.loads(line) for line in f if line.strip()]
    assert [r['step'] for r in logged] == [1, 2, 3, 3]
    assert 'loss' in logged[0] and 'accuracy/top1' in logged[3]

    expected = {}
    for row in logged:
        for tag, value in row.items():
            if tag != 'step':
                expected.setdefault(tag, {}).setdefault(row['step'], []).append(value)
    tb = read_events(vis_dir)
    assert sorted(tb) == sorted(expected)  # the same tags, nothing else
    assert sorted(tb['loss']) == [1, 2, 3] and sorted(tb['accuracy/top1']) == [3]
    for tag, steps in expected.items():
        # TensorBoard keeps float32: equal up to its rounding
        assert tb[tag] == {step: pytest.approx(values, rel=1e-6, abs=1e-9)
                           for step, values in steps.items()}, tag


def test_flag_adds_the_backend_once_and_keeps_local(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location('train_tool', TRAIN)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    cfg = Config.fromfile(DEMO_CFG)  # epoch-based: metrics stay logged by epoch
    assert train.add_tensorboard(cfg) is None and train.add_tensorboard(cfg) is None
    assert [b['type'] for b in cfg.visualizer.vis_backends] == [
        'LocalVisBackend', 'TensorboardVisBackend']
    assert 'log_metric_by_epoch' not in cfg.default_hooks.logger
    seg = Config.fromfile(SEG_CFG)  # IterBasedTrainLoop
    assert 'log_metric_by_epoch=False' in train.add_tensorboard(seg)
    assert seg.default_hooks.logger.log_metric_by_epoch is False
    assert train.add_tensorboard(seg) is None  # already so
    bare = Config(dict(model=dict()))
    train.add_tensorboard(bare)
    assert bare.visualizer == dict(type='Visualizer', vis_backends=[
        dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])


@pytest.mark.parametrize('how', ['flag', 'config'])
def test_missing_tensorboard_is_reported_before_building(how, tmp_path, monkeypatch):
    """Without the package, the flag (or a config listing the backend) stops train.py
    before anything is built, naming the cause and the install command."""
    for name in [m for m in sys.modules if m == 'tensorboard' or m.startswith(
            ('tensorboard.', 'torch.utils.tensorboard'))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'tensorboard', None)  # import tensorboard fails
    cfg = tmp_path / 'cfg.py'
    extra = ("visualizer = dict(vis_backends=[dict(type='LocalVisBackend'), "
             "dict(type='TensorboardVisBackend')])" if how == 'config' else '')
    cfg.write_text(f"_base_ = '{DEMO_CFG}'\n{extra}\n")
    flags = ['--tensorboard'] if how == 'flag' else []
    msg = tool_main(TRAIN, cfg, '--work-dir', tmp_path / 'work', *flags)
    assert msg.startswith('train.py: ' + ('--tensorboard' if how == 'flag' else
                                          f'{cfg} (visualizer.vis_backends)'))
    assert 'needs the tensorboard package' in msg and 'pip install tensorboard' in msg
    assert not (tmp_path / 'work').exists()
