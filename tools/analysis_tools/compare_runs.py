"""Compare the validation metrics of finished runs side by side, as a Markdown table.

    python tools/analysis_tools/compare_runs.py LABEL=WORK_DIR [LABEL=WORK_DIR ...] \
        [--metrics accuracy/top1 mIoU] [--percent] [--out table.md]

Each WORK_DIR is read like ``plot_curves.py`` reads a run (the newest
``<timestamp>/vis_data/scalars.json`` under it). For every run and metric the table gives
the value at the LAST validation and the best one, with where each was measured: the
epoch of an epoch-based run, or the last training iteration before it in an
iteration-based run (mmengine writes step 0 on those validation lines); a metric a run
never logged is "-". ``--percent`` shows values x 100 (mmdet's ``CocoMetric`` logs AP as a
fraction, e.g. ``coco/bbox_mAP`` 0.412 for 41.2 AP). ``tools/run_demo.sh`` uses it for the
pretrained-vs-scratch tables of the demo. Exits with 1, naming the run, when a run has no
scalars or no validation line with any of the metrics.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_curves import CurvesError, load_run  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('runs', nargs='+', metavar='LABEL=WORK_DIR',
                        help='a label for the row, "=", and the run (work dir)')
    parser.add_argument('--metrics', nargs='+', default=['accuracy/top1', 'mIoU'],
                        help='validation keys to report (default: accuracy/top1 mIoU)')
    parser.add_argument('--percent', action='store_true',
                        help='show the values x 100 (for metrics logged as fractions, e.g. '
                        'coco/bbox_mAP coco/segm_mAP)')
    parser.add_argument('--out', help='also write the table to this Markdown file')
    return parser.parse_args(argv)


def summarize(run_dir, metrics):
    """``{metric: (last, last_step, best, best_step)}`` of one run's validation lines."""
    run = load_run(run_dir)
    found = {}
    for m in metrics:
        points = [(row[m], f'epoch {row["step"]}' if row.get('step') else f'iter {after}')
                  for row, after in zip(run.val, run.val_after) if m in row]
        if points:
            best = max(points, key=lambda p: p[0])
            found[m] = (points[-1][0], points[-1][1], best[0], best[1])
    if not found:
        raise CurvesError(f'run {run_dir} has no validation line with {", ".join(metrics)} '
                          f'(read {run.path})')
    return found


def render(rows, metrics, scale=1.0):
    head = '| run | ' + ' | '.join(f'{m} (last) | {m} (best)' for m in metrics) + ' |'
    lines = [head, '|---' * (1 + 2 * len(metrics)) + '|']
    for label, found in rows:
        cells = []
        for m in metrics:
            if m in found:
                last, last_step, best, best_step = found[m]
                cells += [f'{last * scale:.2f} ({last_step})',
                          f'{best * scale:.2f} ({best_step})']
            else:
                cells += ['-', '-']
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    try:
        for spec in args.runs:
            label, sep, path = spec.partition('=')
            if not sep or not label or not path:
                raise CurvesError(f'{spec!r}: give each run as LABEL=WORK_DIR')
            rows.append((label, summarize(path, args.metrics)))
    except CurvesError as exc:
        sys.exit(f'compare_runs.py: {exc}')
    table = render(rows, args.metrics, 100.0 if args.percent else 1.0)
    print(table)
    if args.out:
        from mmbeit.checkpoint import atomic_output
        with atomic_output(args.out) as tmp, open(tmp, 'w') as f:
            f.write(table + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
