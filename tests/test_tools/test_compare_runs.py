"""tools/analysis_tools/compare_runs.py: last / best validation metrics of several runs."""
import json

from _helpers import ROOT, tool_main

TOOL = f'{ROOT}/tools/analysis_tools/compare_runs.py'


def write_run(work, stamp, rows):
    d = work / stamp / 'vis_data'
    d.mkdir(parents=True)
    (d / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in rows))


def test_table_has_last_and_best_of_each_run_and_dash_for_missing(tmp_path, capsys):
    write_run(tmp_path / 'a', '20260101_000000', [
        {'loss': 2.0, 'iter': 10, 'step': 10},
        {'accuracy/top1': 40.0, 'step': 5},
        {'accuracy/top1': 57.5, 'step': 10},
        {'accuracy/top1': 55.0, 'step': 15}])
    # an older run in the same work dir is ignored: the newest timestamp is read
    write_run(tmp_path / 'b', '20250101_000000', [{'mIoU': 99.0, 'step': 1}])
    # iteration-based: mmengine writes step 0 on val lines; the iteration before is used
    write_run(tmp_path / 'b', '20260101_000000', [{'loss': 1.0, 'iter': 250, 'step': 250},
                                                  {'mIoU': 21.5, 'step': 0},
                                                  {'loss': 0.5, 'iter': 1000, 'step': 1000},
                                                  {'mIoU': 34.02, 'step': 0}])
    out = tmp_path / 'table.md'
    assert tool_main(TOOL, f'ft={tmp_path / "a"}', f'seg={tmp_path / "b"}',
                     '--out', out) == ''
    printed = capsys.readouterr().out.strip()
    assert printed.splitlines() == [
        '| run | accuracy/top1 (last) | accuracy/top1 (best) | mIoU (last) | mIoU (best) |',
        '|---|---|---|---|---|',
        '| ft | 55.00 (epoch 15) | 57.50 (epoch 10) | - | - |',
        '| seg | - | - | 34.02 (iter 1000) | 34.02 (iter 1000) |']
    assert out.read_text().strip() == printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a', 'b', 'table.md']  # no temp


def test_a_run_without_the_metrics_or_a_label_is_an_error(tmp_path):
    write_run(tmp_path / 'a', '20260101_000000', [{'loss': 1.0, 'iter': 1, 'step': 1}])
    msg = tool_main(TOOL, f'x={tmp_path / "a"}')
    assert msg.startswith('compare_runs.py: run ') and 'no validation line with ' \
        'accuracy/top1, mIoU' in msg
    assert 'give each run as LABEL=WORK_DIR' in tool_main(TOOL, str(tmp_path / 'a'))
    assert 'does not exist' in tool_main(TOOL, f'x={tmp_path / "nope"}')


def test_percent_scales_fractional_metrics(tmp_path, capsys):
    # mmdet's CocoMetric logs AP as a fraction
    write_run(tmp_path / 'det', '20260101_000000', [
        {'loss': 1.0, 'iter': 200, 'step': 200},
        {'coco/bbox_mAP': 0.125, 'coco/segm_mAP': 0.25, 'step': 0},
        {'loss': 0.5, 'iter': 400, 'step': 400},
        {'coco/bbox_mAP': 0.4125, 'coco/segm_mAP': 0.2, 'step': 0}])
    assert tool_main(TOOL, f'det={tmp_path / "det"}', '--metrics', 'coco/bbox_mAP',
                     'coco/segm_mAP', '--percent') == ''
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        '| det | 41.25 (iter 400) | 41.25 (iter 400) | 20.00 (iter 400) | 25.00 (iter 200) |')
