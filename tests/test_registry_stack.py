"""mmbeit.registry's stack switch: mmseg / mmdet models import after mmbeit.registry."""
import subprocess
import sys
from importlib.metadata import version

import pytest

from mmbeit.registry import multimodal_off

TRANSFORMERS_5 = int(version('transformers').split('.')[0]) >= 5


def _run(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)


def test_multimodal_off_follows_the_transformers_major(monkeypatch):
    import mmbeit.registry as stack
    for v, off in [('5.24.0', True), ('5.0.0', True), ('4.57.1', False), ('4.28.0', False)]:
        monkeypatch.setattr(stack, 'version', lambda name, v=v: v)
        assert stack.multimodal_off() is off, v


@pytest.mark.skipif(not TRANSFORMERS_5, reason='the trap needs transformers 5')
def test_segmentation_and_detection_models_import_after_the_registry():
    # without mmbeit.registry first, mmpretrain's multimodal import breaks mmseg.models:
    # this is the trap the switch exists for (if it stops failing, the switch can go)
    bare = _run('import mmseg.models')
    assert bare.returncode != 0 and 'NoneType takes no arguments' in bare.stderr
    ok = _run('import mmbeit.registry, mmseg.models, mmdet.models\n'
              'import mmpretrain.utils.dependency as d\n'
              'from mmpretrain.registry import MODELS\n'
              'print(d.WITH_MULTIMODAL, MODELS.get("Blip2Caption").__name__)')
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ['False', 'ask_install']
    assert multimodal_off()


def test_bare_import_of_mmbeit_leaves_the_flag_alone():
    out = _run('import mmbeit, sys\nprint("mmpretrain.utils.dependency" in sys.modules)')
    assert out.returncode == 0 and out.stdout.strip() == 'False'
