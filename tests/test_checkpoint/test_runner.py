"""BEiTRunner reads checkpoints through mmbeit.checkpoint; importing mmbeit patches nothing."""
import subprocess
import sys
import uuid

import pytest
import torch
import torch.nn as nn
from _helpers import ROOT
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mmbeit.checkpoint import CheckpointMismatchError, UnsafeCheckpointError
from mmbeit.engine.runner import BEiTRunner


class _Toy(BaseModel):
    def __init__(self, width=2):
        super().__init__()
        self.fc = nn.Linear(2, width)

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=self.fc(inputs).pow(2).mean())


def _runner(cls, work_dir, max_epochs, **kwargs):
    data = [dict(inputs=torch.randn(2, generator=torch.Generator().manual_seed(i)))
            for i in range(8)]
    torch.manual_seed(0)  # the same initial weights in every run
    return cls(
        model=_Toy(), work_dir=str(work_dir),
        experiment_name=f'toy_{uuid.uuid4().hex[:8]}',
        train_dataloader=dict(dataset=data, batch_size=4, collate_fn=dict(type='default_collate'),
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        default_scope='mmbeit', randomness=dict(seed=0), **kwargs)


def test_resume_a_checkpoint_written_by_stock_mmengine(tmp_path):
    _runner(Runner, tmp_path / 'full', 3).train()
    _runner(Runner, tmp_path / 'part', 2).train()
    # stock mmengine's own loader refuses its file under torch's weights-only default
    with pytest.raises(Exception, match='HistoryBuffer'):
        torch.load(tmp_path / 'part' / 'epoch_2.pth')
    runner = _runner(BEiTRunner, tmp_path / 'part', 3, resume=True,
                     load_from=str(tmp_path / 'part' / 'epoch_2.pth'))
    runner.train()
    assert runner.epoch == 3
    full = torch.load(tmp_path / 'full' / 'epoch_3.pth', weights_only=False)['state_dict']
    resumed = torch.load(tmp_path / 'part' / 'epoch_3.pth', weights_only=False)['state_dict']
    for key in full:
        torch.testing.assert_close(resumed[key], full[key])


def test_load_from_is_strict_and_names_the_keys(tmp_path):
    torch.save({'state_dict': {'backbone.foo': torch.zeros(1)}}, tmp_path / 'foo.pth')
    runner = _runner(BEiTRunner, tmp_path / 'w', 1)
    with pytest.raises(CheckpointMismatchError,
                       match=r"'.*foo\.pth' does not fit _Toy:\n  2 missing .*\[fc\.weight, "
                             r"fc\.bias\]\n  1 unexpected .*\[backbone\.foo\]"):
        runner.load_checkpoint(str(tmp_path / 'foo.pth'))
    other = _Toy(width=3).state_dict()
    torch.save({'state_dict': other}, tmp_path / 'wide.pth')
    with pytest.raises(CheckpointMismatchError, match=r'fc\.weight \[3, 2\] in the file, '
                                                      r'\[2, 2\] in the model'):
        runner.load_checkpoint(str(tmp_path / 'wide.pth'))
    # DDP-saved keys load (the unwrap rule strips module.)
    good = {f'module.{k}': v for k, v in _Toy().state_dict().items()}
    torch.save({'state_dict': good}, tmp_path / 'ddp.pth')
    runner.load_checkpoint(str(tmp_path / 'ddp.pth'))
    torch.testing.assert_close(runner.model.fc.weight, good['module.fc.weight'])


def test_load_from_refuses_code(tmp_path):
    import os

    class RunsCode:
        def __reduce__(self):
            return os.system, (f'touch {tmp_path}/ran', )

    torch.save({'state_dict': {}, 'x': RunsCode()}, tmp_path / 'evil.pth')
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        _runner(BEiTRunner, tmp_path / 'w', 1).load_checkpoint(str(tmp_path / 'evil.pth'))
    assert not (tmp_path / 'ran').exists()


PROBE = '''
import copyreg, json, torch
from mmengine.runner import CheckpointLoader
from mmengine.logging import HistoryBuffer

def state():
    return {
        'schemes': {k: getattr(v, '__qualname__', repr(v))
                    for k, v in CheckpointLoader._schemes.items()},
        'copyreg': HistoryBuffer in copyreg.dispatch_table,
        # torch registers its own types when its submodules load (DTensor, ...): compare
        # the others
        'safe_globals': sorted(str(g) for g in torch.serialization.get_safe_globals()
                               if not getattr(g, '__module__', '').startswith('torch')),
    }

before = state()
import mmbeit, mmbeit.checkpoint, mmbeit.models, mmbeit.datasets, mmbeit.engine, mmbeit.apis
import mmbeit.converters, mmbeit.visualization
from mmbeit.checkpoint import read_checkpoint
print(json.dumps([before, state()]))
'''


def test_importing_mmbeit_leaves_mmengine_and_torch_as_they_were():
    out = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    before, after = __import__('json').loads(out.stdout.strip().splitlines()[-1])
    assert before['schemes'] and before == after
