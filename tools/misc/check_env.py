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
}
FIX = 'run `bash tools/install.sh` (it repairs the stack in place)'


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
        ('mmengine', FIX), ('mmpretrain', FIX), ('mmseg.models', FIX), ('mmbeit', FIX),
    ] + ([('pytest', FIX.replace('install.sh', 'install.sh --tests')),
          ('timm', FIX.replace('install.sh', 'install.sh --tests'))] if args.tests else []):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - we report any import failure
            problems.append(f'`import {module}` failed ({type(exc).__name__}: {exc}); {hint}')

    if not problems:
        import torch
        from mmcv.ops import nms
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
        scores = torch.tensor([0.9, 0.8, 0.7])
        _, keep = nms(boxes, scores, 0.5)
        if keep.tolist() != [0, 2]:
            problems.append(f'mmcv.ops.nms gave {keep.tolist()}, expected [0, 2]; the compiled '
                            f'ops are broken: delete ~/.cache/mmbeit/wheels and ' + FIX)

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
          f'cuda available: {torch.cuda.is_available()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
