"""mmbeit.checkpoint.io: weights-only reading with errors naming the file; atomic writes."""
import os
import pickle
import pickletools
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from mmbeit.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointReadError,
    UnsafeCheckpointError,
    atomic_output,
    read_checkpoint,
    save_checkpoint,
)


class _RunsCode:
    """Unpickling this would create ``path``: a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f'touch {self.path}', )


class _GetattrOther:
    """A pickle that asks for getattr(str, 'format'): the getattr the reader allows for
    HistoryBuffer must not reach anything else."""

    def __reduce__(self):
        return getattr, (str, 'format')


class _GetattrPrivate:
    """getattr(HistoryBuffer, '__init__'): only its public functions are allowed."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


def test_crafted_pickles_are_refused_and_not_run(tmp_path):
    marker = tmp_path / 'code_ran'
    for name, payload in (('evil.pth', _RunsCode(marker)), ('attr.pth', _GetattrOther()),
                          ('hb.pth', _GetattrPrivate())):
        path = tmp_path / name
        torch.save({'state_dict': {'weight': torch.ones(2)}, 'payload': payload}, path)
        with pytest.raises(UnsafeCheckpointError, match=rf"refusing to load '.*{name}'.*could "
                                                        r'run code'):
            read_checkpoint(str(path))
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
    # as stock mmengine writes it: the buffer's method table pickled as getattr calls
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith('data.pkl')))
    globals_named = {arg for op, arg, _ in pickletools.genops(data)
                     if op.name in ('GLOBAL', 'STACK_GLOBAL')}
    assert '__builtin__ getattr' in globals_named
    back = read_checkpoint(str(path))
    assert back['meta']['lr'] == 0.1 and isinstance(back['meta']['lr'], np.float64)
    assert back['meta']['hist'].tolist() == [0, 1, 2]
    assert back['meta']['f32'] == np.float32(2.0)
    assert back['message_hub']['log_scalars']['train/loss'].mean() == 2.0
    assert torch.equal(back['state_dict']['w'], torch.arange(4.))


def test_unreadable_files_name_the_file_and_what_is_wrong(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, good)
    data = good.read_bytes()
    cases = {
        'cut.pth': (data[:len(data) // 2], r'truncated'),
        'empty.pth': (b'', r'empty \(0 bytes\)'),
        'junk.pth': (b'this is not a checkpoint', r'not a torch checkpoint or is corrupt'),
    }
    for name, (content, what) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointReadError, match=rf"'.*{name}' \(\d+ bytes\): .*{what}"):
            read_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointNotFoundError, match=r"'.*nope\.pth' does not exist"):
        read_checkpoint(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='is a folder'):
        read_checkpoint(tmp_path)
    assert issubclass(CheckpointReadError, ValueError)
    assert issubclass(UnsafeCheckpointError, (CheckpointError, pickle.UnpicklingError))


def test_atomic_output_leaves_nothing_half_written(tmp_path):
    target = tmp_path / 'out' / 'model.pth'
    save_checkpoint({'w': torch.ones(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)['w'], torch.ones(3))
    with pytest.raises(RuntimeError, match='disk full'):
        with atomic_output(target) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'partial')
            raise RuntimeError('disk full')
    # the old file is intact and no temporary file is left
    assert torch.equal(torch.load(target, weights_only=True)['w'], torch.ones(3))
    assert sorted(p.name for p in target.parent.iterdir()) == ['model.pth']
    # a folder is replaced only once the new one is complete
    folder = tmp_path / 'data'
    for content in ('old', 'new'):
        with atomic_output(folder) as tmp:
            os.makedirs(tmp)
            (open(os.path.join(tmp, 'f.txt'), 'w')).write(content)
    assert (folder / 'f.txt').read_text() == 'new'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['data', 'out']
