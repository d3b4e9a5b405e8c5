"""Every config under configs/ (not _base_) builds: its model through the registries in
the config's default scope, its optimiser wrapper on that model, and the data pipeline
of each of its dataloaders. Run in a fresh process, as tools/train.py would, with weights
that cannot exist here switched off (building a model reads no checkpoint; the
transfer configs' init_cfg is read by init_weights only: tests/test_transfer_configs.py)."""
import json
import sys

from _helpers import ROOT, run_tool

SCRIPT = r'''
import glob, json, sys
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope, init_default_scope
import mmbeit.datasets, mmbeit.engine, mmbeit.models  # noqa
from mmbeit.registry import MODELS

torch.set_num_threads(1)
results = {}
for path in sorted(sys.argv[1:]):
    cfg = Config.fromfile(path)
    model_cfg = cfg.model
    # Weights that cannot be downloaded here: build with random weights instead.
    for key in ('checkpoint', 'encoder_checkpoint', 'decoder_checkpoint'):
        model_cfg.pop(key, None)
    if isinstance(model_cfg.get('teacher'), dict):
        model_cfg.teacher.pop('checkpoint', None)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmbeit')):
        model = MODELS.build(model_cfg)
        n = sum(p.numel() for p in model.parameters())
        entry = dict(type=type(model).__name__, params=n)
        if 'optim_wrapper' in cfg:
            ow = build_optim_wrapper(model, cfg.optim_wrapper)
            entry['groups'] = len(ow.optimizer.param_groups)
            entry['trainable'] = sum(p.numel() for g in ow.optimizer.param_groups
                                     for p in g['params'])
        pipelines = {}
        for split in ('train', 'val', 'test'):
            loader = cfg.get(f'{split}_dataloader')
            if loader:
                # as the dataset builds it in a run: mmengine's Compose, in the
                # dataset's scope (mmpretrain's RandAugment builds its policies by
                # their bare names)
                # (a SeededDataset: the dataset it wraps; a ConcatDataset: each of its
                # datasets)
                datasets, names = [loader.dataset], []
                while any('pipeline' not in d for d in datasets):
                    datasets = [c for d in datasets for c in (
                        [d] if 'pipeline' in d else
                        [d.dataset] if 'dataset' in d else d.datasets)]
                for ds in datasets:
                    with DefaultScope.overwrite_default_scope(
                            ds.get('_scope_', cfg.default_scope)):
                        built = Compose([dict(t) for t in ds.pipeline])
                    names += [type(t).__name__ for t in built.transforms]
                pipelines[split] = names
        entry['pipelines'] = pipelines
        train = cfg.get('train_dataloader') or {}
        entry['train_sampler'] = (train.get('sampler') or {}).get('type')
        entry['train_dataset'] = (train.get('dataset') or {}).get('type')
        entry['backbone_init'] = (cfg.model.get('backbone') or {}).get('init_cfg')
    results[path] = entry
print('RESULTS' + json.dumps(results))
'''


def test_every_config_builds():
    import glob
    configs = sorted(p for p in glob.glob(f'{ROOT}/configs/**/*.py', recursive=True)
                     if '/_base_/' not in p)
    assert len(configs) >= 6
    out = run_tool(['-c', SCRIPT, *configs], timeout=900)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith('RESULTS'))
    results = json.loads(line[len('RESULTS'):])
    assert set(results) == set(configs)
    by_name = {p.split('/configs/')[1]: r for p, r in results.items()}

    clip = by_name['vqkd/vqkd_vit-base_clip-teacher_100e_in1k.py']
    assert clip['type'] == 'VQKD'
    # The teacher is frozen: what the optimiser sees is the tokenizer alone. ViT-B encoder
    # (85.8M) + 3-block decoder + task layers, and no codebook (a buffer).
    assert 90e6 < clip['trainable'] < 115e6 < clip['params']
    dino = by_name['vqkd/vqkd_vit-base_dino-teacher_100e_in1k.py']
    assert dino['trainable'] > clip['trainable']  # 768-d decode task layer instead of 512
    assert by_name['tokenizers/dalle_dvae_openai.py']['type'] == 'DALLETokenizer'
    assert by_name['tokenizers/vqkd_vit-base_clip_official.py']['type'] == 'VQKD'

    # Pretraining configs draw each sample's mask in the pipeline, seeded per sample.
    pretrain = sorted(k for k, v in by_name.items() if v['type'] == 'BEiT')
    assert len(pretrain) == 8  # beit: base, large; beitv2: 2 x 2; demo: VQ-KD, HOG tokens
    for name in pretrain:
        entry = by_name[name]
        assert entry['pipelines']['train'][-2:] == ['MIMMask', 'PackMIMInputs'], name
        assert entry['train_sampler'] == 'mmbeit.SeededSampler', name
        assert entry['train_dataset'] in ('mmbeit.SeededDataset', 'SeededDataset'), name

    # Transfer configs: every one that trains has a train and a test pipeline, and
    # each downstream config starts from a checkpoint that our own runs write.
    transfer = {k: v for k, v in by_name.items() if '/benchmarks/' in k}
    assert len(transfer) >= 10
    for name, entry in transfer.items():
        assert {'train', 'val', 'test'} <= set(entry['pipelines']), name
        init = entry['backbone_init']
        assert init['type'] == 'Pretrained' and init['prefix'] == 'backbone.', name
        assert init['checkpoint'].startswith('work_dirs/'), name
    seg = by_name['beitv2/benchmarks/beitv2_vit-base_upernet-160k_ade20k-512.py']
    assert seg['type'] == 'EncoderDecoder'
    assert 'RandomCrop' in seg['pipelines']['train'] and 'PackSegInputs' in seg['pipelines']['test']
    ft = by_name['beitv2/benchmarks/beitv2_vit-base_ft-100e_in1k.py']
    assert {'RandAugment', 'RandomErasing'} <= set(ft['pipelines']['train'])
    # ViT-B (85.8M) + a 1000-way head, all trainable
    assert 86e6 < ft['trainable'] == ft['params'] < 87.5e6
    for probe in ('beitv2/benchmarks/beitv2_vit-base_linear-100e_in1k.py',
                  'beit/benchmarks/beit_vit-base_linear-layer9-100e_in1k.py'):
        # only the linear head is in the optimiser: 768 (cls token) or 1536 (cls + mean)
        dims = 768 if 'beitv2' in probe else 1536
        assert by_name[probe]['trainable'] == dims * 1000 + 1000, probe
    print(json.dumps(by_name, indent=1), file=sys.stderr)
