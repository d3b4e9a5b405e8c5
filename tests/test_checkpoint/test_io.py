"""Every checkpoint is read weights-only; our runners' checkpoints still load."""
import os

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModule
from mmengine.runner import load_checkpoint

from mmbeit.engine.checkpoint import UnsafeCheckpointError, load_weights_only


class _RunsCode:
    """Unpickling this would create ``path``: a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f'touch {self.path}',)


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / 'code_ran'
    ckpt = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'weight': torch.ones(2)}, 'payload': _RunsCode(marker)}, ckpt)
    return ckpt, marker


def test_crafted_pickle_is_refused_and_not_run(malicious):
    ckpt, marker = malicious
    with pytest.raises(UnsafeCheckpointError, match=r"Refusing to load '.*evil\.pth'.*could "
                                                     r"run code.*system"):
        load_weights_only(str(ckpt))
    assert not marker.exists()


def test_mmengine_load_checkpoint_goes_through_weights_only(malicious):
    ckpt, marker = malicious
    model = torch.nn.Linear(2, 1)
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        load_checkpoint(model, str(ckpt))
    assert not marker.exists()


def test_pretrained_init_cfg_goes_through_weights_only(malicious):
    ckpt, marker = malicious

    class Net(BaseModule):
        def __init__(self):
            super().__init__(init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))
            self.weight = torch.nn.Parameter(torch.zeros(2))

    with pytest.raises(UnsafeCheckpointError):
        Net().init_weights()
    assert not marker.exists()


def test_runner_checkpoint_contents_load(tmp_path):
    buf = HistoryBuffer()
    buf.update(1.5)
    buf.update(2.5)
    obj = {'meta': {'seed': 0, 'lr': np.float64(0.1), 'hist': np.arange(3),
                    'dtype': np.dtype('float32'), 'f32': np.float32(2.0)},
           'message_hub': {'log_scalars': {'train/loss': buf}},
           'state_dict': {'w': torch.arange(4.)}}
    path = tmp_path / 'ok.pth'
    torch.save(obj, path)
    back = load_weights_only(str(path))
    assert back['meta']['lr'] == 0.1 and isinstance(back['meta']['lr'], np.float64)
    assert back['meta']['hist'].tolist() == [0, 1, 2]
    assert back['meta']['f32'] == np.float32(2.0)
    assert back['message_hub']['log_scalars']['train/loss'].mean() == 2.0
    assert torch.equal(back['state_dict']['w'], torch.arange(4.))


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint(torch.nn.Linear(1, 1), str(tmp_path / 'nope.pth'))
