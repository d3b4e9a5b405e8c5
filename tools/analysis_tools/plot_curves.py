"""Plot the loss / accuracy / lr curves of one or more training runs into an image.

Reads the scalars mmengine's ``LocalVisBackend`` writes to
``WORK_DIR/<timestamp>/vis_data/scalars.json`` (one JSON object per line; the text log
``<timestamp>.log`` is not read). RUN is a work dir (the newest ``*/vis_data/scalars.json``
under it is used; the output says which), a ``<timestamp>`` dir, a ``vis_data`` dir, or a
scalars file. Several RUNs are overlaid, one colour per run, one subplot per key.

Lines of scalars.json:

- training lines (``LoggerHook.after_train_iter``) always carry ``iter`` (the global
  iteration, equal to ``step``), ``epoch`` too when ``log_processor.by_epoch=True``, plus
  ``lr``, ``loss``, ``loss_*``, ``time``, ``data_time``, ...;
- validation lines (``LoggerHook.after_val_epoch``) carry the metrics (``accuracy/top1``,
  ...), ``time`` / ``data_time`` and ``step``, and never ``iter`` or ``epoch``. Their
  ``step`` is the epoch (``LoggerHook.log_metric_by_epoch=True``, the default) or the
  iteration (``log_metric_by_epoch=False``, the setting for iteration-based loops).

The x axis (``--x iter``, the default) is the iteration for every curve. Validation points
are placed at the iteration they were run after: with ``--val-step epoch`` (chosen by
``auto`` when training lines carry ``epoch`` and no val step exceeds the last epoch), val
epoch E is drawn at the last logged training iteration of epoch E, which is the end of
the epoch unless ``LoggerHook.ignore_last`` dropped a final partial interval; with
``--val-step iter`` the step is the iteration, except that ``step`` 0 after training
lines (an iteration-based loop logged with ``log_metric_by_epoch=True``, where mmengine
writes the loop's epoch, always 0) is placed at the last training iteration before it
in the file. ``--x epoch`` (runs whose training lines carry ``epoch``) draws training
points at ``iter / iters_per_epoch`` and val points at their epoch.

Lines of the kNN monitor (``KNNMonitorHook``, docs/monitoring.md) carry ``knn/top1``,
``knn/top5`` and ``step``; their ``step`` is always the number of training iterations done
(0 = before training), whatever the validation lines of the same run count.

Default keys: every training key starting with ``loss``, every key containing ``acc``
(training and validation), the kNN monitor's ``knn/*``, and ``lr`` (a ``train/`` / ``val/``
prefix, written with ``log_processor.log_with_hierarchy=True``, is ignored when matching).
A key found in both kinds of lines (``time``) is drawn twice, the val curve dashed with
markers.
``--smooth N`` draws the trailing moving average over N points (the first N-1 points
average what is there) on top of the faint raw curve.

Prints where each run was read from, a table of the first / last / min / max value of
every key, run and split, and the path of the image, written atomically
(``mmbeit.checkpoint.atomic_output``: a temporary file in the same folder, renamed at the
end). Uses matplotlib's Agg canvas (no display).

Example::

    python tools/analysis_tools/plot_curves.py work_dirs/demo/20261121_021712 \
        --out work_dirs/demo/curves.png --smooth 3
    python tools/analysis_tools/plot_curves.py work_dirs/a work_dirs/b --keys loss lr \
        --legend baseline ours --title 'demo runs' --out curves.png
"""
import argparse
import json
import math
import os.path as osp
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

AXIS_KEYS = ('step', 'iter', 'epoch')  # bookkeeping, not curves
TIMESTAMP = re.compile(r'^\d{8}_\d{6}$')  # mmengine's run folder names: sortable by time


class CurvesError(Exception):
    """A user error (bad RUN, unknown key, ...): the CLI prints it and exits with 1."""


@dataclass
class Run:
    """The scalars of one run, split into training and validation lines (file order)."""
    name: str
    path: str  # the scalars file read
    train: list
    val: list
    val_after: list = field(default_factory=list)  # per val line: last train iter before it
    skipped: int = 0  # lines that are not a JSON object (a crash in the middle of a write)
    note: str = ''


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _no_scalars_message(run):
    msg = (f'no scalars.json for run {run}: expected a scalars.json file, a <timestamp> dir '
           'holding vis_data/scalars.json, or a work dir holding '
           '<timestamp>/vis_data/scalars.json (written by mmengine\'s LocalVisBackend)')
    logs = sorted(Path(run).glob('*.log')) + sorted(Path(run).glob('*/*.log'))
    if logs:
        msg += f'; found only text logs ({logs[-1]}), which this tool does not read'
    return msg


def find_scalars(run):
    """Return ``(path of the scalars file, note)`` for RUN (see the module docstring)."""
    p = Path(run)
    if not p.exists():
        raise CurvesError(f'run {run} does not exist')
    if p.is_file():
        return p, ''
    for direct in (p / 'scalars.json', p / 'vis_data' / 'scalars.json'):
        if direct.is_file():
            return direct, ''
    found = list(p.glob('*/vis_data/scalars.json'))
    if not found:
        raise CurvesError(_no_scalars_message(run))
    if all(TIMESTAMP.match(f.parent.parent.name) for f in found):
        found.sort(key=lambda f: f.parent.parent.name)
    else:
        found.sort(key=lambda f: f.stat().st_mtime)
    note = f'newest of {len(found)} runs under {run}' if len(found) > 1 else ''
    return found[-1], note


def _read_rows(path):
    rows, skipped = [], 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                skipped += 1
    if not rows:
        raise CurvesError(f'{path} holds no scalar lines (the run stopped before its first '
                          'log interval?)')
    return rows, skipped


def load_scalars(path):
    """Read a scalars file (or RUN): ``(train_rows, val_rows)``, each a list of dicts in file
    order. Training lines are the ones with ``iter``; all others are validation lines."""
    rows, _ = _read_rows(find_scalars(path)[0])
    return [r for r in rows if 'iter' in r], [r for r in rows if 'iter' not in r]


def _default_name(run, path):
    path = Path(path)
    if path.parent.name == 'vis_data' and len(path.parents) >= 3:
        return path.parents[2].resolve().name  # the work dir
    return Path(run).resolve().name if Path(run).is_dir() else path.parent.resolve().name


def load_run(run, name=None):
    """Read RUN into a :class:`Run`; ``name`` defaults to the work dir's name."""
    path, note = find_scalars(run)
    rows, skipped = _read_rows(path)
    train, val, val_after, last_iter = [], [], [], 0
    for row in rows:
        if 'iter' in row:
            train.append(row)
            if _is_number(row['iter']):
                last_iter = row['iter']
        else:
            val.append(row)
            val_after.append(last_iter)
    return Run(name or _default_name(run, path), str(path), train, val, val_after, skipped,
               note)


def _bare(key):
    for prefix in ('train/', 'val/'):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _keys(rows):
    out = {}
    for row in rows:
        for k, v in row.items():
            if k not in AXIS_KEYS and _is_number(v):
                out.setdefault(k)
    return list(out)


def available_keys(runs):
    return sorted({k for r in runs for k in _keys(r.train) + _keys(r.val)})


def default_keys(runs):
    """Training ``loss*`` keys, then keys containing ``acc`` (train, then val), the kNN
    monitor's ``knn/*``, then ``lr``."""
    train = [k for r in runs for k in _keys(r.train)]
    val = [k for r in runs for k in _keys(r.val)]
    keys = [k for k in train if _bare(k).startswith('loss')]
    keys += [k for k in train + val if 'acc' in _bare(k)]
    keys += [k for k in val if k.startswith('knn/')]
    keys += [k for k in train if _bare(k) == 'lr']
    return list(dict.fromkeys(keys))


def _knn_line(row):
    """A line of the kNN monitor: its ``step`` counts iterations (module docstring)."""
    return any(k.startswith('knn/') for k in row)


def val_step_kind(run, val_step='auto'):
    """What the ``step`` of ``run``'s validation lines counts: ``'epoch'`` or ``'iter'``
    (the kNN monitor's lines always count iterations and are not considered)."""
    if val_step != 'auto':
        return val_step
    epochs = [r['epoch'] for r in run.train if _is_number(r.get('epoch'))]
    if epochs and all(r.get('step', 0) <= max(epochs) for r in run.val if not _knn_line(r)):
        return 'epoch'
    return 'iter'


def iters_per_epoch(run):
    """The smallest epoch length consistent with every training line: max ceil(iter/epoch)."""
    ratios = [math.ceil(r['iter'] / r['epoch']) for r in run.train
              if _is_number(r.get('epoch')) and r['epoch'] >= 1 and _is_number(r['iter'])]
    return max(ratios) if ratios else None


def val_iterations(run, val_step='auto'):
    """The iteration each validation line of ``run`` is drawn at (module docstring)."""
    kind = val_step_kind(run, val_step)
    end_of_epoch = {}
    for r in run.train:
        if _is_number(r.get('epoch')) and _is_number(r['iter']):
            end_of_epoch[r['epoch']] = max(end_of_epoch.get(r['epoch'], 0), r['iter'])
    xs = []
    for row, after in zip(run.val, run.val_after):
        step = row.get('step', 0)
        if _knn_line(row):
            xs.append(step)
        elif kind == 'epoch':
            xs.append(end_of_epoch.get(step, after))
        else:
            xs.append(after if step == 0 and after > 0 else step)
    return xs


def series(run, key, x='iter', val_step='auto'):
    """``[(split, xs, ys), ...]`` of ``key`` in ``run``: 'train' and / or 'val'."""
    ipe = None
    if x == 'epoch':
        ipe = iters_per_epoch(run)
        if ipe is None and run.train:
            raise CurvesError(f"--x epoch: run {run.name} ({run.path}) has no 'epoch' in its "
                              'training lines (an iteration-based run); use --x iter')
    out = []
    train = [r for r in run.train if _is_number(r.get(key)) and _is_number(r['iter'])]
    if train:
        xs = [r['iter'] if ipe is None else r['iter'] / ipe for r in train]
        out.append(('train', xs, [r[key] for r in train]))
    kind = val_step_kind(run, val_step)
    vx = val_iterations(run, val_step)
    val = [(i, r) for i, r in enumerate(run.val) if _is_number(r.get(key))]
    if val:
        if x == 'iter':
            xs = [vx[i] for i, _ in val]
        elif kind == 'epoch' or ipe is None:
            xs = [r.get('step', 0) for _, r in val]
        else:
            xs = [vx[i] / ipe for i, _ in val]
        out.append(('val', xs, [r[key] for _, r in val]))
    return out


def moving_average(y, n):
    """Trailing mean over ``n`` points; the first ``n - 1`` points average what exists."""
    y = np.asarray(y, dtype=float)
    if n <= 1 or len(y) == 0:
        return y
    sums = np.convolve(y, np.ones(n))[:len(y)]
    return sums / np.minimum(np.arange(1, len(y) + 1), n)


def _unique_names(runs):
    original = [r.name for r in runs]
    names = list(original)
    for i, r in enumerate(runs):
        if original.count(r.name) > 1:
            p = Path(r.path)
            names[i] = f'{r.name}/{p.parents[1].name}' if p.parent.name == 'vis_data' else \
                f'{r.name}/{p.name}'
    renamed = list(names)
    for i, n in enumerate(renamed):
        if renamed.count(n) > 1:
            names[i] = f'{n}#{i + 1}'
    for r, n in zip(runs, names):
        r.name = n


def _save_atomic(fig, out):
    from mmbeit.checkpoint import atomic_output  # imports torch: only when saving
    out = osp.abspath(out)
    fmt = osp.splitext(out)[1][1:].lower() or 'png'
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format=fmt)
    return out


def plot(runs, keys=None, out='curves.png', legend=None, title=None, smooth=1, x='iter',
         val_step='auto', dpi=110):
    """Draw ``keys`` (default: :func:`default_keys`) of ``runs`` (:class:`Run` objects or
    RUN paths) into ``out``. Returns the figure's content: ``out``, ``num_axes``, ``axes``
    (per subplot: key, xlabel and its lines with label, run, split, kind 'raw' / 'smooth',
    x, y as drawn) and ``stats`` (per key, run and split: n, first, last, min, max)."""
    if x not in ('iter', 'epoch'):
        raise CurvesError(f"--x must be 'iter' or 'epoch', got {x!r}")
    if val_step not in ('auto', 'epoch', 'iter'):
        raise CurvesError(f"--val-step must be 'auto', 'epoch' or 'iter', got {val_step!r}")
    if int(smooth) != smooth or smooth < 1:
        raise CurvesError(f'--smooth must be a whole number >= 1, got {smooth}')
    smooth = int(smooth)
    runs = [replace(r) if isinstance(r, Run) else load_run(r) for r in runs]  # names change
    if not runs:
        raise CurvesError('no runs given')
    if legend is not None:
        if len(legend) != len(runs):
            raise CurvesError(f'--legend has {len(legend)} names for {len(runs)} runs')
        for r, n in zip(runs, legend):
            r.name = n
    else:
        _unique_names(runs)
    avail = available_keys(runs)
    if keys:
        keys = list(dict.fromkeys(keys))
        missing = [k for k in keys if k not in avail]
        if missing:
            what = 'key' if len(missing) == 1 else 'keys'
            raise CurvesError(f'{what} {", ".join(map(repr, missing))} not found in any run; '
                              f'available keys: {", ".join(avail)}')
    else:
        keys = default_keys(runs)
        if not keys:
            raise CurvesError('no loss / acc / lr keys in the runs; pick some with --keys '
                              f'from: {", ".join(avail)}')

    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.6 * nrows + (0.4 if title else 0)), dpi=dpi,
                 layout='constrained')
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in grid[len(keys):]:
        fig.delaxes(ax)
    info = dict(out=None, num_axes=len(keys), axes=[], stats=[])
    xlabel = 'iteration' if x == 'iter' else 'epoch'
    for ax, key in zip(grid, keys):
        ax_info = dict(key=key, title=key, xlabel=xlabel, lines=[])
        for ri, run in enumerate(runs):
            color = f'C{ri % 10}'
            for split, xs, ys in series(run, key, x, val_step):
                label = run.name if split == 'train' else f'{run.name} (val)'
                style = dict(color=color, linewidth=1.2)
                if split == 'val':
                    style.update(linestyle='--', marker='o', markersize=3.5)
                drawn = []
                if smooth > 1:
                    raw, = ax.plot(xs, ys, alpha=0.25, **style)
                    line, = ax.plot(xs, moving_average(ys, smooth), label=label, **style)
                    drawn = [('raw', raw), ('smooth', line)]
                else:
                    line, = ax.plot(xs, ys, label=label, **style)
                    drawn = [('raw', line)]
                for kind, ln in drawn:
                    ax_info['lines'].append(dict(
                        label=label, run=run.name, split=split, kind=kind,
                        x=[float(v) for v in ln.get_xdata()],
                        y=[float(v) for v in ln.get_ydata()]))
                arr = np.asarray(ys, dtype=float)
                info['stats'].append(dict(
                    key=key, run=run.name, split=split, n=len(ys), first=float(arr[0]),
                    last=float(arr[-1]), min=float(np.nanmin(arr)),
                    max=float(np.nanmax(arr))))
        ax.set_title(key)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax_info['lines']:
            ax.legend(fontsize='small')
        info['axes'].append(ax_info)
    if title:
        fig.suptitle(title)
    info['out'] = _save_atomic(fig, out)
    info['runs'] = [dict(name=r.name, path=r.path, note=r.note, train=len(r.train),
                         val=len(r.val), skipped=r.skipped,
                         val_step=val_step_kind(r, val_step)) for r in runs]
    return info


def format_table(stats):
    head = ('key', 'run', 'split', 'n', 'first', 'last', 'min', 'max')
    rows = [head] + [(s['key'], s['run'], s['split'], str(s['n'])) +
                     tuple(f'{s[c]:.6g}' for c in ('first', 'last', 'min', 'max'))
                     for s in stats]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='+', metavar='RUN',
                   help='work dir, <timestamp> dir or scalars.json; several are overlaid')
    p.add_argument('--out', required=True, help='image to write (.png; parent dirs created)')
    p.add_argument('--keys', nargs='+', help='scalars to plot, one subplot each (default: '
                   'training loss*, every key containing acc, lr)')
    p.add_argument('--legend', nargs='+', metavar='NAME', help='one name per RUN '
                   '(default: the work dir names)')
    p.add_argument('--title', help='figure title')
    p.add_argument('--smooth', type=int, default=1, metavar='N',
                   help='also draw the moving average over N points (default 1: off)')
    p.add_argument('--x', choices=('iter', 'epoch'), default='iter', help='x axis')
    p.add_argument('--val-step', choices=('auto', 'epoch', 'iter'), default='auto',
                   help="what the val lines' step counts (default: epoch when training "
                   'lines carry epoch, else iter)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        runs = [load_run(r) for r in args.runs]
        info = plot(runs, args.keys, args.out, legend=args.legend, title=args.title,
                    smooth=args.smooth, x=args.x, val_step=args.val_step)
    except CurvesError as e:
        raise SystemExit(f'error: {e}') from None
    for r in info['runs']:
        extra = f', {r["note"]}' if r['note'] else ''
        bad = f', {r["skipped"]} unreadable lines skipped' if r['skipped'] else ''
        print(f'{r["name"]}: {r["path"]} ({r["train"]} train / {r["val"]} val lines, '
              f'val step = {r["val_step"]}{extra}{bad})')
    print(format_table(info['stats']))
    print(f'saved {info["out"]} ({info["num_axes"]} subplots)')
    return info


if __name__ == '__main__':
    main(sys.argv[1:])
