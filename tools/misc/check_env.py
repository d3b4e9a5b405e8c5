"""Check that the mmbeit stack imports and works; say what is wrong and how to fix it.

Run by ``tools/install.sh`` as its last step; also useful on its own::

    python tools/misc/check_env.py [--tests]
"""
import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

EXPECTED = {
    'torch': '2.13.0',
    'torchvision': '0.28.0',
    'mmcv': '2.1.0',
    'mmengine': '0.10.7',
    'mmpretrain': '1.2.0',
    'mmsegmentation': '1.2.2',
    'mmdet': '3.3.0',
}
FIX = 'run `bash tools/install.sh` (it repairs the stack in place)'


def multimodal_hint(exc: Exception) -> str:
    """The fix when an import failed in mmpretrain's multimodal models, else ''.

    mmpretrain 1.2.0 imports its BLIP / Flamingo / ... models whenever pycocotools (an mmdet
    dependency) and transformers >= 4.28 are both installed; they need transformers 4.x
    (``apply_chunking_to_forward`` is gone in 5.x) and fail with ``TypeError: NoneType takes
    no arguments``. mmdet.models imports mmpretrain.models, and mmseg.models imports
    mmdet.models, so the whole stack is hit.
    """
    tb = exc.__traceback__
    while tb is not None:
        if 'mmpretrain/models/multimodal' in tb.tb_frame.f_code.co_filename.replace('\\', '/'):
            break
        tb = tb.tb_next
    else:
        return ''
    try:
        tf = version('transformers')
    except PackageNotFoundError:
        tf = 'not installed'
    return (f'mmpretrain 1.2.0 imports its multimodal models because pycocotools and '
            f'transformers ({tf}) are installed, and they need transformers 4.x; import '
            f'mmbeit.registry first (it switches them off), or `pip uninstall transformers` '
            f'where the tests are not run')


def check_mmdet_ops() -> list:
    """One mmdet op path: mmdet's box structure and its multiclass NMS (mmcv.ops inside)."""
    import torch
    from mmdet.models.layers import multiclass_nms
    from mmdet.structures.bbox import HorizontalBoxes, bbox_overlaps

    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    iou = bbox_overlaps(boxes[:1], boxes[1:]).flatten().tolist()
    # scores: one column per class plus mmdet's background column last
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0]])
    dets, labels = multiclass_nms(boxes, scores, score_thr=0.05,
                                  nms_cfg=dict(type='nms', iou_threshold=0.5))
    got = [round(v, 4) for v in dets[:, 4].tolist()], labels.tolist()
    area = HorizontalBoxes(boxes).areas.tolist()
    if (got != ([0.9, 0.7], [0, 0]) or [round(v, 4) for v in iou] != [0.81, 0.0]
            or area != [100., 81., 100.]):
        return [f'mmdet {version("mmdet")} box ops gave scores/labels {got}, IoU {iou}, areas '
                f'{area}; expected ([0.9, 0.7], [0, 0]), [0.81, 0.0], [100, 81, 100]: mmdet or '
                f'mmcv.ops is broken; ' + FIX]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--tests', action='store_true', help='also check the test tools')
    args = parser.parse_args()
    problems = []

    for dist, want in EXPECTED.items():
        try:
            have = version(dist)
        except PackageNotFoundError:
            problems.append(f'{dist} is not installed; {FIX}')
            continue
        if have.split('+')[0] != want:
            problems.append(f'{dist} is {have}, mmbeit is tested with {want}; {FIX}')

    for module, hint in [
        ('torch', FIX),
        ('torchvision', 'a CPU-only torch (`+cpu`) cannot load the registry torchvision; ' + FIX),
        ('mmcv.ops', 'mmcv was installed without compiled ops (mmcv-lite or a wheel for another '
                     'torch); remove it (`pip uninstall mmcv mmcv-lite`) and ' + FIX),
        ('mmengine', FIX), ('mmpretrain', FIX), ('mmbeit.registry', FIX), ('mmseg.models', FIX),
        ('mmdet.models', FIX),
    ] + ([('pytest', FIX.replace('install.sh', 'install.sh --tests')),
          ('timm', FIX.replace('install.sh', 'install.sh --tests')),
          ('xdist', FIX.replace('install.sh', 'install.sh --tests'))] if args.tests else []):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - we report any import failure
            problems.append(f'`import {module}` failed ({type(exc).__name__}: {exc}); '
                            f'{multimodal_hint(exc) or hint}')

    if not problems:
        import torch
        from mmcv.ops import nms
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
        scores = torch.tensor([0.9, 0.8, 0.7])
        _, keep = nms(boxes, scores, 0.5)
        if keep.tolist() != [0, 2]:
            problems.append(f'mmcv.ops.nms gave {keep.tolist()}, expected [0, 2]; the compiled '
                            f'ops are broken: delete ~/.cache/mmbeit/wheels and ' + FIX)
        problems += check_mmdet_ops()

    if problems:
        print('[check_env] the mmbeit stack is not usable:', file=sys.stderr)
        for p in problems:
            print(f'  - {p}', file=sys.stderr)
        return 1
    import torch

    import mmbeit
    print(f'[check_env] ok: mmbeit {mmbeit.__version__}, torch {torch.__version__}, '
          f'mmcv {version("mmcv")} (ops), mmengine {version("mmengine")}, '
          f'mmpretrain {version("mmpretrain")}, mmseg {version("mmsegmentation")}, '
          f'mmdet {version("mmdet")}, '
          f'cuda available: {torch.cuda.is_available()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
