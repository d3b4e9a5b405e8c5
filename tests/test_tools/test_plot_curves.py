"""tools/analysis_tools/plot_curves.py on synthetic mmengine scalars.json files: as a
subprocess for the CLI (output, table, errors) and in-process for the figure content."""
import importlib.util
import json
import os
import os.path as osp
import sys

import numpy as np
import pytest
from _helpers import ROOT, run_tool
from PIL import Image

TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'plot_curves.py')
IPE = 4  # iterations per epoch of the synthetic epoch-based run (logged every 2 iterations)


@pytest.fixture(scope='module')
def pc():
    spec = importlib.util.spec_from_file_location('plot_curves_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def epoch_rows(epochs=3, ipe=IPE, interval=2, offset=0.0):
    """mmengine's lines of an epoch-based run: training every ``interval`` iterations (and
    at the end of an epoch), a val line after every epoch with step = epoch."""
    rows = []
    for e in range(1, epochs + 1):
        inner = list(range(interval, ipe + 1, interval))
        for i in (inner if inner[-1] == ipe else inner + [ipe]):
            it = (e - 1) * ipe + i
            rows.append({'lr': 0.1 / it, 'data_time': 0.01, 'grad_norm': 2.0,
                         'loss': 3.0 - 0.1 * it + offset + 0.05 * (it % 3), 'loss_1': it * 0.5,
                         'loss_2': 10.0 + (it % 4), 'acc_1': 10.0 * it, 'time': 0.3,
                         'epoch': e, 'iter': it, 'memory': 0, 'step': it})
        rows.append({'accuracy/top1': 10.0 * e + offset, 'accuracy/top5': 50.0 + e,
                     'data_time': 0.02, 'time': 0.2, 'step': e})
    return rows


def write_run(work, rows, stamp='20260101_000000', bad_tail=False):
    vis = work / stamp / 'vis_data'
    vis.mkdir(parents=True)
    text = ''.join(json.dumps(r) + '\n' for r in rows)
    if bad_tail:
        text += '{"lr": 0.1, "lo'  # a line cut off by a crash
    (vis / 'scalars.json').write_text(text)
    (work / stamp / f'{stamp}.log').write_text('text log\n')
    return vis / 'scalars.json'


def table(stdout):
    """{(key, run, split): (n, first, last, min, max)} from the printed table."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ['key', 'run', 'split'])
    out = {}
    for ln in lines[start + 1:]:
        if ln.startswith('saved '):
            break
        key, run, split, n, *vals = ln.split()
        out[key, run, split] = (int(n), *map(float, vals))
    return out


def stats(values):
    return (len(values), values[0], values[-1], min(values), max(values))


def test_load_scalars_splits_train_and_val(pc, tmp_path):
    rows = epoch_rows()
    path = write_run(tmp_path / 'w', rows, bad_tail=True)
    for arg in (path, path.parent.parent, tmp_path / 'w', path.parent):
        train, val = pc.load_scalars(arg)
        assert train == [r for r in rows if 'iter' in r]
        assert val == [r for r in rows if 'iter' not in r]
    assert len(train) == 6 and [v['step'] for v in val] == [1, 2, 3]
    run = pc.load_run(tmp_path / 'w')
    assert (run.name, run.skipped, run.val_after) == ('w', 1, [4, 8, 12])


def test_cli_newest_run_default_keys_and_table(pc, tmp_path):
    work = tmp_path / 'my_run'
    write_run(work, epoch_rows(offset=100.0), stamp='20260101_000000')  # older
    rows = epoch_rows()
    newest = write_run(work, rows, stamp='20260102_000000')
    out = tmp_path / 'plots' / 'sub' / 'curves.png'
    out.parent.mkdir(parents=True)
    out.write_bytes(b'old')  # replaced
    proc = run_tool([TOOL, work, '--out', out])
    # the newest of the two runs is read (and named in the output), the older one not
    run = pc.load_run(work)
    assert str(run.path) == str(newest) and (len(run.train), len(run.val)) == (6, 3)
    assert str(newest) in proc.stdout and '20260101_000000' not in proc.stdout
    assert str(out) in proc.stdout.splitlines()[-1]  # the file written
    with Image.open(out) as im:
        assert im.format == 'PNG' and im.size[0] > 500
    assert os.listdir(out.parent) == ['curves.png']  # no temporary file left

    got = table(proc.stdout)
    train = [r for r in rows if 'iter' in r]
    val = [r for r in rows if 'iter' not in r]
    expect = {(k, 'my_run', 'train'): stats([r[k] for r in train])
              for k in ('loss', 'loss_1', 'loss_2', 'acc_1', 'lr')}
    for k in ('accuracy/top1', 'accuracy/top5'):
        expect[k, 'my_run', 'val'] = stats([r[k] for r in val])
    assert list(got) == [('loss', 'my_run', 'train'), ('loss_1', 'my_run', 'train'),
                         ('loss_2', 'my_run', 'train'), ('acc_1', 'my_run', 'train'),
                         ('accuracy/top1', 'my_run', 'val'), ('accuracy/top5', 'my_run', 'val'),
                         ('lr', 'my_run', 'train')]
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, rel=1e-5), k


def test_plot_overlays_runs_and_maps_val_epochs(pc, tmp_path):
    a = write_run(tmp_path / 'a', epoch_rows())
    b = write_run(tmp_path / 'b', epoch_rows(epochs=2, ipe=6, offset=1.0))
    out = tmp_path / 'c.png'
    info = pc.plot([tmp_path / 'a', b], ['loss', 'accuracy/top1', 'time'], out, title='t')
    assert info['out'] == str(out) and out.is_file()
    assert info['num_axes'] == 3 and [ax['key'] for ax in info['axes']] == [
        'loss', 'accuracy/top1', 'time']
    loss, acc, time = info['axes']
    assert [(ln['label'], ln['split']) for ln in loss['lines']] == [('a', 'train'),
                                                                     ('b', 'train')]
    assert loss['lines'][0]['x'] == [2, 4, 6, 8, 10, 12]
    assert loss['lines'][0]['y'] == [r['loss'] for r in pc.load_scalars(a)[0]]
    # val epoch E is drawn at the last training iteration of epoch E
    assert [(ln['label'], ln['x'], ln['y']) for ln in acc['lines']] == [
        ('a (val)', [4, 8, 12], [10, 20, 30]), ('b (val)', [6, 12], [11, 21])]
    # a key in both kinds of lines gives a train and a val curve per run
    assert [ln['label'] for ln in time['lines']] == ['a', 'a (val)', 'b', 'b (val)']

    info = pc.plot([a, b], ['accuracy/top1', 'loss'], tmp_path / 'e.png', x='epoch',
                   legend=['base', 'ours'])
    acc, loss = info['axes']
    assert acc['xlabel'] == 'epoch' and acc['lines'][0]['x'] == [1, 2, 3]
    assert acc['lines'][0]['label'] == 'base (val)'
    assert loss['lines'][0]['x'] == pytest.approx([0.5, 1, 1.5, 2, 2.5, 3])
    assert loss['lines'][1]['x'] == pytest.approx([2 / 6, 4 / 6, 1, 8 / 6, 10 / 6, 2])


def test_plot_iteration_based_val_steps(pc, tmp_path):
    train = [{'lr': 0.1, 'loss': 1.0 / i, 'iter': i, 'step': i} for i in range(5, 31, 5)]
    # log_metric_by_epoch=False: step is the iteration
    rows = train[:2] + [{'accuracy/top1': 1.0, 'step': 10}] + train[2:4] + \
        [{'accuracy/top1': 2.0, 'step': 20}] + train[4:]
    write_run(tmp_path / 'it', rows)
    # the default log_metric_by_epoch=True with IterBasedTrainLoop writes step 0 every time
    rows0 = [dict(r, step=0) if 'iter' not in r else r for r in rows]
    write_run(tmp_path / 'it0', rows0)
    info = pc.plot([tmp_path / 'it', tmp_path / 'it0'], ['accuracy/top1'], tmp_path / 'i.png')
    assert [ln['x'] for ln in info['axes'][0]['lines']] == [[10, 20], [10, 20]]
    assert [r['val_step'] for r in info['runs']] == ['iter', 'iter']
    assert pc.default_keys([pc.load_run(tmp_path / 'it')]) == ['loss', 'accuracy/top1', 'lr']
    with pytest.raises(pc.CurvesError) as exc:
        pc.plot([tmp_path / 'it'], ['loss'], tmp_path / 'x.png', x='epoch')
    assert str(exc.value) == (f"--x epoch: run it ({tmp_path}/it/20260101_000000/vis_data/"
                              "scalars.json) has no 'epoch' in its training lines (an "
                              'iteration-based run); use --x iter')


def test_smoothing_is_a_trailing_moving_average(pc, tmp_path):
    write_run(tmp_path / 's', epoch_rows())
    y = [r['loss'] for r in pc.load_scalars(tmp_path / 's')[0]]
    info = pc.plot([tmp_path / 's'], ['loss', 'accuracy/top1'], tmp_path / 's.png', smooth=3)
    raw, smooth = info['axes'][0]['lines']
    assert (raw['kind'], smooth['kind']) == ('raw', 'smooth') and raw['y'] == y
    by_hand = [y[0], (y[0] + y[1]) / 2] + [sum(y[i - 2:i + 1]) / 3 for i in range(2, len(y))]
    assert smooth['y'] == pytest.approx(by_hand, abs=1e-12) and smooth['x'] == raw['x']
    val_raw, val_smooth = info['axes'][1]['lines']
    assert val_smooth['y'] == pytest.approx([10, 15, 20])
    # the table reports the raw values
    assert info['stats'][0] == dict(key='loss', run='s', split='train', n=6, first=y[0],
                                    last=y[-1], min=min(y), max=max(y))
    np.testing.assert_allclose(pc.moving_average([1, 2, 3, 4], 1), [1, 2, 3, 4])


def test_errors(pc, tmp_path):
    empty = tmp_path / 'empty_run'
    (empty / '20260101_000000').mkdir(parents=True)
    (empty / '20260101_000000' / '20260101_000000.log').write_text('x\n')
    msg = (f'no scalars.json for run {empty}: expected a scalars.json file, a <timestamp> dir '
           'holding vis_data/scalars.json, or a work dir holding '
           "<timestamp>/vis_data/scalars.json (written by mmengine's LocalVisBackend); found "
           f'only text logs ({empty}/20260101_000000/20260101_000000.log), which this tool '
           'does not read')
    with pytest.raises(pc.CurvesError) as exc:
        pc.load_run(empty)
    assert str(exc.value) == msg
    write_run(tmp_path / 'ok', epoch_rows())
    proc = run_tool([TOOL, tmp_path / 'ok', empty, '--out', tmp_path / 'x.png'], check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == f'error: {msg}'
    assert not (tmp_path / 'x.png').exists()

    proc = run_tool([TOOL, tmp_path / 'ok', '--keys', 'loss', 'val_loss', '--out',
                     tmp_path / 'x.png'], check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: key 'val_loss' not found in any run; available keys: acc_1, accuracy/top1, "
        'accuracy/top5, data_time, grad_norm, loss, loss_1, loss_2, lr, memory, time')
    with pytest.raises(pc.CurvesError, match=r"^keys 'a', 'b' not found in any run; "):
        pc.plot([tmp_path / 'ok'], ['a', 'loss', 'b'], tmp_path / 'x.png')
    with pytest.raises(pc.CurvesError, match=r'^--legend has 2 names for 1 runs$'):
        pc.plot([tmp_path / 'ok'], None, tmp_path / 'x.png', legend=['a', 'b'])
    with pytest.raises(pc.CurvesError, match=f'^run {tmp_path}/nope does not exist$'):
        pc.load_run(tmp_path / 'nope')
    assert not (tmp_path / 'x.png').exists()


def test_failed_write_keeps_the_old_image(pc, tmp_path, monkeypatch):
    write_run(tmp_path / 'ok', epoch_rows())
    out = tmp_path / 'curves.png'
    out.write_bytes(b'old')

    def fail(self, *args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(pc.Figure, 'savefig', fail)
    with pytest.raises(OSError, match='disk full'):
        pc.plot([tmp_path / 'ok'], ['loss'], out)
    assert out.read_bytes() == b'old' and sorted(os.listdir(tmp_path)) == ['curves.png', 'ok']


def test_knn_monitor_lines_are_drawn_at_their_iteration(pc, tmp_path):
    """KNNMonitorHook lines count iterations in ``step`` even in an epoch-based run whose
    validation lines count epochs; they are default keys and do not change how the
    validation lines are placed."""
    rows = [{'knn/top1': 12.5, 'knn/top5': 60.0, 'step': 0}] + epoch_rows()
    # after iteration 2 (read as epoch 2 it would be drawn at iteration 8), after epoch 2
    # (iteration 8) and at the end (iteration 12)
    for it, top1 in ((2, 20.0), (8, 40.0)):
        rows.insert(rows.index(next(r for r in rows if r.get('iter') == it)) + 1,
                    {'knn/top1': top1, 'knn/top5': 90.0, 'step': it})
    rows.append({'knn/top1': 55.0, 'knn/top5': 95.0, 'step': 12})
    write_run(tmp_path / 'k', rows)
    run = pc.load_run(tmp_path / 'k')
    assert pc.val_step_kind(run) == 'epoch'  # the kNN steps (8, 12 > 3 epochs) are ignored
    keys = pc.default_keys([run])
    assert keys[-3:] == ['knn/top1', 'knn/top5', 'lr']
    info = pc.plot([tmp_path / 'k'], ['knn/top1', 'accuracy/top1'], tmp_path / 'k.png')
    knn, acc = info['axes']
    assert [(ln['x'], ln['y']) for ln in knn['lines']] == [([0, 2, 8, 12],
                                                          [12.5, 20.0, 40.0, 55.0])]
    assert acc['lines'][0]['x'] == [4, 8, 12]  # val epochs 1-3 at their last iteration
