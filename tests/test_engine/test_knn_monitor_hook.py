"""Tests for mmbeit/engine/hooks/knn_monitor.py (KNNMonitorHook).

- two gloo ranks (forked processes), each embedding an uneven shard of the bank (63
  labelled toy images: 32 / 31) and of the queries (15: 8 / 7), report exactly the
  single-process numbers, and the gathered bank is the single-process bank in dataset
  order;
- inside real mmengine training runs (epoch- and iteration-based, in a forked process, on
  the ``demo_data`` fixture's classification images at 32 px read by mmpretrain's
  ImageNet) the hook writes knn/top1 / knn/top5 to vis_data/scalars.json and TensorBoard
  at the expected steps (before training, every interval, at the end) and logs its line;
- the exact errors of bad arguments and of a model it cannot use; normalisation; modes.
The backbone is a 2-block, 32-dim BEiTViT (tests/_helpers.py ``tiny``). Children are
forked (they inherit this process's imports, so they start at once) and die with their
state (a Runner's registries, scopes and singletons).
"""
import json
import os
import re
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from _helpers import ROOT, free_port, randomize_, tiny
from mmengine.logging import MessageHub, MMLogger
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.runner import IterBasedTrainLoop, Runner

from mmbeit.engine.hooks import KNNMonitorHook
from mmbeit.registry import HOOKS

pytestmark = pytest.mark.usefixtures('one_thread')

PIPELINE = [
    dict(type='mmpretrain.LoadImageFromFile'),
    dict(type='mmpretrain.ResizeEdge', scale=36, edge='short', backend='pillow'),
    dict(type='mmpretrain.CenterCrop', crop_size=32),
    dict(type='mmpretrain.PackInputs'),
]


def loader(data_root, split, n, batch_size=5):
    """Dataloader config of the first ``n`` images of a split of the demo ImageNet."""
    return dict(batch_size=batch_size, num_workers=0,
                dataset=dict(type='mmpretrain.ImageNet', _scope_='mmpretrain',
                             data_root=str(data_root), split=split, indices=n,
                             metainfo=dict(classes=f'{data_root}/meta/classes.txt'),
                             pipeline=PIPELINE))


class Preprocessor(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer('mean', torch.tensor([120., 110., 100.]).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor([60., 55., 50.]).view(1, 3, 1, 1))


class Recorder:
    """Stands for runner.visualizer: records add_scalars calls."""

    def __init__(self):
        self.calls = []

    def add_scalars(self, scalars, step=0, **kwargs):
        self.calls.append((dict(scalars), step))


class FakeRunner:
    """What the hook uses of mmengine's Runner."""
    _count = 0

    def __init__(self, model, train_loop=None):
        FakeRunner._count += 1
        name = f'knn_monitor_test_{os.getpid()}_{FakeRunner._count}'
        self.model, self.train_loop = model, train_loop or object()
        self.message_hub = MessageHub.get_instance(name)
        self.logger = MMLogger.get_instance(name)
        self.visualizer = Recorder()
        self.epoch = self.iter = self.seed = 0
        self.build_dataloader = Runner.build_dataloader


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Module()
    model.backbone = randomize_(tiny(final_norm=True, out_type='raw'), seed=seed)
    model.data_preprocessor = Preprocessor()
    return model


class ToyImages(torch.utils.data.Dataset):
    """``n`` labelled uint8 images [3, 32, 32] in memory, as PackInputs gives them (no
    decoding: the distributed test is about the sharding and the reductions)."""

    class Sample:
        def __init__(self, label):
            self.gt_label = torch.tensor([label])

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 5, (n,), generator=g)
        base = torch.rand(5, 3, 32, 32, generator=g) * 200  # one pattern per class + noise
        noise = torch.rand(n, 3, 32, 32, generator=g) * 120
        self.images = (base[self.labels] * 0.6 + noise).to(torch.uint8)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return dict(inputs=self.images[i], data_samples=self.Sample(int(self.labels[i])))


def knn_once(out=None):
    """Evaluate once (before training) on 63 bank / 15 query images, in this process or
    on this rank. Returns the hook's ``last`` record, the gathered bank (features, labels)
    and the visualizer's calls; with ``out``, saves them there."""
    toy = lambda n, seed: dict(batch_size=5, num_workers=0, dataset=ToyImages(n, seed))  # noqa
    hook = KNNMonitorHook(bank=toy(63, 0), queries=toy(15, 1), k=5, topk=(1, 3))
    runner = FakeRunner(tiny_model())
    hook.before_train(runner)
    bank = hook._gather(*hook._embed(runner.model.backbone, hook._loaders[0],
                                     torch.device('cpu')))
    result = (hook.last, bank, runner.visualizer.calls)
    if out is not None:
        torch.save(result, out)
    return result


def _child(errfile, target, *args):
    """Body of a forked child: run ``target``; its traceback goes to ``errfile``."""
    try:
        target(*args)
    except BaseException:
        Path(errfile).write_text(traceback.format_exc())
        raise


def forked(tmp_path, name, target, *args):
    """Start ``target(*args)`` in a forked process (it inherits this process's imports,
    so it starts at once); returns (process, file that gets its traceback)."""
    err = tmp_path / f'{name}.err'
    proc = mp.get_context('fork').Process(target=_child, args=(err, target, *args))
    proc.start()
    return proc, err


def join(children, timeout=240):
    try:
        for proc, err in children:
            proc.join(timeout)
            assert proc.exitcode == 0, err.read_text() if err.exists() else proc.exitcode
    finally:
        for proc, _ in children:
            if proc.is_alive():
                proc.kill()


def rank_worker(rank, port, out):
    torch.distributed.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                                         rank=rank, world_size=2)
    knn_once(out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path):
    port = free_port()
    children = [forked(tmp_path, f'rank{r}', rank_worker, r, port, tmp_path / f'rank{r}.pt')
                for r in range(2)]
    try:
        single = knn_once()  # meanwhile, here, one process
    finally:
        join(children)
    last, (bank, bank_labels), calls = single
    assert last['bank'] == 63 and last['queries'] == 15
    assert calls == [(last['results'], 0)]
    assert torch.equal(bank_labels, ToyImages(63, 0).labels)
    for r in (0, 1):
        r_last, (r_bank, r_labels), _ = torch.load(tmp_path / f'rank{r}.pt', weights_only=False)
        assert r_last == last, r  # counts summed over both ranks' queries
        assert torch.equal(r_labels, bank_labels)  # dataset order restored
        torch.testing.assert_close(r_bank, bank, rtol=0, atol=1e-5)  # other batch shapes
    # the numbers are the kNN of the whole query set, not of one shard (8 / 7 queries)
    assert last['results'] == {f'knn/top{t}': 100 * c / 15 for t, c in last['correct'].items()}
    assert 0 < last['correct'][1] < last['correct'][3] < 15


class TinyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.backbone = tiny(final_norm=True, out_type='raw')

    def forward(self, inputs, data_samples=None, mode='loss'):
        x = torch.stack(inputs).float() / 255.
        return dict(loss=self.backbone(x)[0][:, 0].sub(1).pow(2).mean())


def train_runs(data_root, work_dir):
    """An epoch-based run (3 epochs of 4 iterations, kNN every 2 epochs) and an
    iteration-based one (5 iterations, every 2), on the demo classification images."""
    torch.set_num_threads(1)
    for name, train_cfg, interval, by_epoch in (
            ('epochs', dict(by_epoch=True, max_epochs=3), 2, True),
            ('iters', dict(by_epoch=False, max_iters=5), 2, False)):
        hook = dict(type='KNNMonitorHook', bank=loader(data_root, 'train', 63),
                    queries=loader(data_root, 'val', 15), interval=interval,
                    by_epoch=by_epoch, feature='avg', mean=[123.675, 116.28, 103.53],
                    std=[58.395, 57.12, 57.375])
        Runner(
            model=TinyModel(), work_dir=f'{work_dir}/{name}', experiment_name=name,
            train_dataloader=dict(
                batch_size=16, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
                dataset=dict(type='mmpretrain.ImageNet', _scope_='mmpretrain',
                             data_root=str(data_root), split='train', pipeline=PIPELINE)),
            train_cfg=train_cfg, optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05)),
            custom_hooks=[hook], default_scope='mmbeit',
            default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                               checkpoint=dict(type='CheckpointHook', interval=100)),
            visualizer=dict(type='Visualizer', name=f'knn_test_{name}', vis_backends=[
                dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]),
            randomness=dict(seed=0)).train()


def test_in_training_runs_scalars_tensorboard_and_log(tmp_path, demo_data):
    join([forked(tmp_path, 'train', train_runs, demo_data / 'imagenet', tmp_path)])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    lines = []
    # epoch-based: before training (0), after epoch 2 (iteration 8), at the end (12);
    # iteration-based: 0, 2, 4 and the end (5)
    for name, steps in (('epochs', [0, 8, 12]), ('iters', [0, 2, 4, 5])):
        (scalars,) = Path(tmp_path, name).glob('*/vis_data/scalars.json')
        rows = [json.loads(line) for line in scalars.read_text().splitlines()]
        knn = [r for r in rows if 'knn/top1' in r]
        assert [r['step'] for r in knn] == steps, name
        for r in knn:
            assert set(r) == {'knn/top1', 'knn/top5', 'step'}  # a val line for plot_curves
            assert 0 <= r['knn/top1'] <= r['knn/top5'] <= 100
            assert r['knn/top1'] * 15 / 100 == pytest.approx(round(r['knn/top1'] * 0.15))
        assert len(rows) > len(knn)  # the training lines are there too
        (events,) = Path(tmp_path, name).glob('*/vis_data/events.out.tfevents.*')
        acc = EventAccumulator(str(events))
        acc.Reload()
        tb = [(e.step, e.value) for e in acc.Scalars('knn/top1')]
        assert tb == [(r['step'], pytest.approx(r['knn/top1'])) for r in knn]
        (log,) = Path(tmp_path, name).glob('*/*.log')
        lines += [line for line in log.read_text().splitlines() if 'kNN (k=20' in line]
    assert len(lines) == 7, lines
    assert re.search(r'kNN \(k=20, T=0\.07, mean patch token of block 2/2\) at epoch 2, iter 8: '
                     r'top-1 \d+\.\d\d, top-5 \d+\.\d\d \| bank 63, queries 15, 8 classes \| '
                     r'\d+\.\d s; kNN total \d+\.\d s = \d+\.\d% of the \d+ s since training '
                     r'started$', lines[1]), lines
    assert re.search(r' at epoch 0, iter 0: .* kNN total \d+\.\d s \(before training\)$',
                     lines[0]), lines
    assert ' at epoch 3, iter 12: ' in lines[2]
    assert ' at iter 4: ' in lines[5]  # iteration-based: no epoch


@pytest.mark.parametrize('kwargs,message', [
    (dict(interval=0), 'KNNMonitorHook: interval must be an integer >= 1, got 0'),
    (dict(k=0), 'KNNMonitorHook: k must be an integer >= 1, got 0'),
    (dict(chunk_size=2.5), 'KNNMonitorHook: chunk_size must be an integer >= 1, got 2.5'),
    (dict(temperature=0.), 'KNNMonitorHook: temperature must be a number > 0, got 0.0'),
    (dict(feature='max'),
     "KNNMonitorHook: feature must be one of ('cls', 'avg', 'cls_and_avg'), got 'max'"),
    (dict(layer='last'), "KNNMonitorHook: layer must be an integer block index, got 'last'"),
    (dict(topk=()), 'KNNMonitorHook: topk must be integers >= 1, e.g. (1, 5), got ()'),
    (dict(topk=(1, 0)), 'KNNMonitorHook: topk must be integers >= 1, e.g. (1, 5), got (1, 0)'),
    (dict(mean=[1, 2]), 'KNNMonitorHook: mean must be 3 finite numbers (R, G, B in 0-255 '
                        'units), got [1, 2]'),
    (dict(std=[1, 0, 1]), 'KNNMonitorHook: std must be 3 positive finite numbers (R, G, B in '
                          '0-255 units), got [1, 0, 1]'),
    (dict(bank=dict(dataset=dict())), "KNNMonitorHook: bank must be a dataloader config dict "
                                      "with 'dataset' and 'batch_size', got {'dataset': {}}"),
])
def test_bad_arguments(kwargs, message):
    args = dict(bank=dict(dataset=dict(), batch_size=1), queries=dict(dataset=dict(),
                                                                      batch_size=1))
    args.update(kwargs)
    with pytest.raises(ValueError, match=f'^{re.escape(message)}$'):
        KNNMonitorHook(**args)


def test_registered_and_errors_at_before_train():
    cfg = dict(bank=dict(dataset=dict(), batch_size=1), queries=dict(dataset=dict(),
                                                                     batch_size=1))
    assert isinstance(HOOKS.build(dict(type='KNNMonitorHook', **cfg)), KNNMonitorHook)
    plain = nn.Module()
    plain.backbone = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=re.escape(
            'KNNMonitorHook: Module has no backbone.forward_layers(x, layers); the hook needs '
            'a model whose backbone is a ViT like mmbeit BEiTViT (remove the hook from '
            'custom_hooks otherwise)')):
        KNNMonitorHook(**cfg).before_train(FakeRunner(plain))
    with pytest.raises(TypeError, match='Linear has no backbone.forward_layers'):
        KNNMonitorHook(**cfg).before_train(FakeRunner(nn.Linear(2, 2)))
    loop = IterBasedTrainLoop.__new__(IterBasedTrainLoop)  # only its type is looked at
    with pytest.raises(ValueError, match=re.escape(
            'KNNMonitorHook: the train loop is iteration-based; set by_epoch=False and give '
            'interval in iterations (or leave the hook out: custom_hooks = [])')):
        KNNMonitorHook(**cfg).before_train(FakeRunner(tiny_model(), loop))
    with pytest.raises(ValueError, match=re.escape(
            'KNNMonitorHook: layer=2 is out of range for a backbone of 2 blocks')):
        KNNMonitorHook(layer=2, **cfg).before_train(FakeRunner(tiny_model()))
    no_pre = tiny_model()
    del no_pre.data_preprocessor
    with pytest.raises(ValueError, match=re.escape(
            "KNNMonitorHook: mean=None, and the model's data_preprocessor has no 3-channel "
            'mean; pass mean=[...] (0-255 units) to the hook')):
        KNNMonitorHook(**cfg).before_train(FakeRunner(no_pre))


def test_images_are_normalised_like_the_preprocessor():
    """BGR uint8 from PackInputs -> RGB, (x - mean) / std with the model's values; other
    sizes in one batch are an error naming the fix."""
    hook = KNNMonitorHook(bank=dict(dataset=dict(), batch_size=1),
                          queries=dict(dataset=dict(), batch_size=1))
    hook._norm = hook._resolve_norm(FakeRunner(tiny_model()))
    bgr = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    got = hook._images(list(bgr), torch.device('cpu'))
    mean = torch.tensor([120., 110., 100.]).view(1, 3, 1, 1)
    std = torch.tensor([60., 55., 50.]).view(1, 3, 1, 1)
    torch.testing.assert_close(got, (bgr.float()[:, [2, 1, 0]] - mean) / std)
    hook.to_rgb = False
    torch.testing.assert_close(hook._images(bgr, torch.device('cpu')),
                               (bgr.float() - mean) / std)
    with pytest.raises(ValueError, match=re.escape(
            'KNNMonitorHook: images of one batch differ in size [(3, 4, 4), (3, 5, 5)]; end '
            'the kNN pipelines with a resize and a center crop to one size')):
        hook._images([bgr[0], torch.zeros(3, 5, 5, dtype=torch.uint8)], torch.device('cpu'))


def test_train_modes_restored(demo_data):
    """Evaluation runs in eval mode; every module's own mode comes back afterwards (a
    frozen, eval-mode part stays in eval)."""
    model = tiny_model()
    model.backbone.train()
    model.backbone.blocks[0].eval()
    seen = []
    for block in model.backbone.blocks:
        block.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    hook = KNNMonitorHook(bank=loader(demo_data / 'imagenet', 'train', 6),
                          queries=loader(demo_data / 'imagenet', 'val', 3), k=3,
                          before_train=False)
    runner = FakeRunner(model)
    with DefaultScope.overwrite_default_scope('mmbeit'):
        hook.before_train(runner)
        assert seen == [] and hook.last is None
        hook.after_train(runner)
    assert seen and not any(seen)
    assert model.backbone.training and not model.backbone.blocks[0].training
    assert model.backbone.blocks[1].training
    assert hook.last['bank'] == 6 and hook.last['queries'] == 3
    assert runner.message_hub.get_scalar('knn/top1').current() == hook.last['results'][
        'knn/top1']
    hook.after_train(runner)  # already evaluated at this iteration: nothing new
    assert len(runner.visualizer.calls) == 1


def test_demo_pretraining_config_has_the_hook():
    """The HOG-token demo pretraining watches kNN on the demo classification images: the
    hook builds from the config and its pipelines compose (in mmpretrain's scope)."""
    from mmengine.config import Config
    from mmengine.dataset import Compose
    cfg = Config.fromfile(f'{ROOT}/configs/demo/beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py')
    (hook_cfg,) = cfg.custom_hooks
    hook = HOOKS.build(dict(hook_cfg))
    assert isinstance(hook, KNNMonitorHook)
    assert (hook.feature, hook.layer, hook.k, hook.temperature) == ('cls', -1, 20, 0.07)
    assert hook.by_epoch and hook.eval_before_train and hook.interval == 10
    for loader_cfg, split in ((hook.bank_cfg, 'train'), (hook.queries_cfg, 'val')):
        ds = loader_cfg['dataset']
        assert (ds['data_root'], ds['split']) == ('data/demo/imagenet', split)
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            names = [type(t).__name__ for t in Compose([dict(t) for t in ds['pipeline']])
                     .transforms]
        assert names == ['LoadImageFromFile', 'ResizeEdge', 'CenterCrop', 'PackInputs']
