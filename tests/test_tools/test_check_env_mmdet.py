"""tools/misc/check_env.py: the mmdet 3.3.0 checks (version, import hint, one op path)."""
import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def check_env():
    spec = importlib.util.spec_from_file_location('check_env', ROOT / 'tools/misc/check_env.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wrong_mmdet_version_is_named_with_the_fix(check_env, monkeypatch, capsys):
    real = check_env.version
    monkeypatch.setattr(check_env, 'version',
                        lambda d: '3.2.0' if d == 'mmdet' else real(d))
    # imports are not what this test is about: make them free
    monkeypatch.setattr(check_env, 'importlib', types.SimpleNamespace(import_module=lambda m: m))
    monkeypatch.setattr(sys, 'argv', ['check_env.py'])
    assert check_env.main() == 1
    err = capsys.readouterr().err
    assert ('mmdet is 3.2.0, mmbeit is tested with 3.3.0; run `bash tools/install.sh`' in err)
    assert err.count('\n  - ') == 1  # only mmdet is wrong


def test_multimodal_import_failure_gets_its_own_hint(check_env):
    code = compile('class Bert(None.__class__): pass', 'x/mmpretrain/models/multimodal/blip.py',
                   'exec')
    with pytest.raises(TypeError) as info:
        exec(code, {})
    hint = check_env.multimodal_hint(info.value)
    assert hint.startswith('mmpretrain 1.2.0 imports its multimodal models because pycocotools')
    assert 'import mmbeit.registry first' in hint
    assert check_env.multimodal_hint(TypeError('elsewhere')) == ''


def test_mmdet_op_path_runs_and_a_wrong_result_is_reported(check_env, monkeypatch):
    import mmbeit.registry  # noqa: F401 - as check_env does: before mmdet.models
    assert check_env.check_mmdet_ops() == []
    import mmdet.models.layers as layers
    real = layers.multiclass_nms
    monkeypatch.setattr(layers, 'multiclass_nms',
                        lambda b, s, **kw: (real(b, s, **kw)[0][:1], real(b, s, **kw)[1][:1]))
    (msg,) = check_env.check_mmdet_ops()
    assert msg.startswith('mmdet 3.3.0 box ops gave scores/labels ([0.9], [0])')
    assert msg.endswith('mmdet or mmcv.ops is broken; run `bash tools/install.sh` (it repairs '
                        'the stack in place)')
