"""AsyncRuntimeInfoHook: the training outputs reach the message hub as with mmengine's
RuntimeInfoHook, one iteration late for CUDA outputs (no host read of a running step),
at once for CPU outputs; nothing is lost at the end of an epoch or of the run."""
from unittest import mock

import torch
from mmengine.hooks import RuntimeInfoHook
from mmengine.logging import MessageHub

from mmbeit.engine.hooks import AsyncRuntimeInfoHook


class FakeRunner:
    def __init__(self, name):
        self.message_hub = MessageHub.get_instance(name)


def outputs(i):
    return {'loss': torch.tensor(1.0 + i), 'loss_1': torch.tensor(0.5 * i),
            'acc_1': torch.tensor(10.0 * i)}


def history(runner, key):
    return runner.message_hub.get_scalar(f'train/{key}').data[0].tolist()


def run_stock(n, name):
    runner, hook = FakeRunner(name), RuntimeInfoHook()
    for i in range(n):
        hook.after_train_iter(runner, i, outputs=outputs(i))
    return runner


def test_cuda_outputs_published_one_iteration_late_and_flushed():
    runner, hook = FakeRunner('async-cuda'), AsyncRuntimeInfoHook()
    copies = []

    def fake_copy(stacked):  # what reaches the host; no event on CPU
        copies.append(stacked)
        return stacked.clone(), None

    with mock.patch.object(AsyncRuntimeInfoHook, '_deferrable', return_value=True), \
            mock.patch.object(AsyncRuntimeInfoHook, '_start_copy', side_effect=fake_copy):
        hook.after_train_iter(runner, 0, outputs=outputs(0))
        assert 'train/loss' not in runner.message_hub.log_scalars  # not read yet
        hook.after_train_iter(runner, 1, outputs=outputs(1))
        assert history(runner, 'loss') == [1.0]
        hook.after_train_iter(runner, 2, outputs=outputs(2))
        hook.after_train_epoch(runner)  # the last iteration's values arrive here
    assert len(copies) == 3 and copies[2].tolist() == [3.0, 1.0, 20.0]
    stock = run_stock(3, 'stock-cuda')
    for key in ('loss', 'loss_1', 'acc_1'):
        assert history(runner, key) == history(stock, key), key


def test_cpu_outputs_published_at_once_as_mmengine_does():
    runner, hook = FakeRunner('async-cpu'), AsyncRuntimeInfoHook()
    for i in range(2):
        hook.after_train_iter(runner, i, outputs=outputs(i))
        assert len(history(runner, 'loss')) == i + 1
    stock = run_stock(2, 'stock-cpu')
    assert history(runner, 'acc_1') == history(stock, 'acc_1')
    assert not AsyncRuntimeInfoHook._deferrable([torch.tensor(1.0)])  # CPU tensor
    assert not AsyncRuntimeInfoHook._deferrable([])
