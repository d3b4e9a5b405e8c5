"""Every config under configs/ (not _base_) builds: its model through the registries in
the config's default scope, its optimiser wrapper on that model, and the data pipeline
of each of its dataloaders; one test case per config, in this process, with weights
that cannot exist here switched off (building a model reads no checkpoint; the
transfer configs' init_cfg is read by init_weights only: tests/test_transfer_configs.py)."""
import functools
import glob

import pytest
from _helpers import ROOT
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

CONFIGS = sorted(p for p in glob.glob(f'{ROOT}/configs/**/*.py', recursive=True)
                 if '/_base_/' not in p)
NAMES = [p.split('/configs/')[1] for p in CONFIGS]

# One intra-op thread (tests/conftest.py): the models are built, not run.
pytestmark = pytest.mark.usefixtures('one_thread')


def pipeline_datasets(loader):
    """The dataset configs holding a pipeline: a SeededDataset's wrapped dataset, each of a
    ConcatDataset's datasets."""
    datasets = [loader.dataset]
    while any('pipeline' not in d for d in datasets):
        datasets = [c for d in datasets for c in (
            [d] if 'pipeline' in d else [d.dataset] if 'dataset' in d else d.datasets)]
    return datasets


@functools.lru_cache(maxsize=None)
def built(name: str) -> dict:
    """What building config ``name`` gives: the model's class and parameter count, the
    optimiser's view of it, the class names of each pipeline, the train sampler and dataset
    types and the backbone's init_cfg. Cached: the cross-config tests reuse it."""
    import mmbeit.datasets  # noqa: F401
    import mmbeit.engine  # noqa: F401
    import mmbeit.models  # noqa: F401
    from mmbeit.registry import MODELS
    cfg = Config.fromfile(f'{ROOT}/configs/{name}')
    model_cfg = cfg.model
    # Weights that cannot be downloaded here: build with random weights instead.
    for key in ('checkpoint', 'encoder_checkpoint', 'decoder_checkpoint'):
        model_cfg.pop(key, None)
    if isinstance(model_cfg.get('teacher'), dict):
        model_cfg.teacher.pop('checkpoint', None)
    scope = cfg.get('default_scope', 'mmbeit')
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(model_cfg)
        entry = dict(type=type(model).__name__, params=sum(p.numel() for p in model.parameters()))
        if 'optim_wrapper' in cfg:
            ow = build_optim_wrapper(model, cfg.optim_wrapper)
            entry['groups'] = len(ow.optimizer.param_groups)
            entry['trainable'] = sum(p.numel() for g in ow.optimizer.param_groups
                                     for p in g['params'])
            del ow
        del model
        pipelines = {}
        for split in ('train', 'val', 'test'):
            loader = cfg.get(f'{split}_dataloader')
            if loader:
                # as the dataset builds it in a run: mmengine's Compose, in the dataset's
                # scope (mmpretrain's RandAugment builds its policies by their bare names)
                names = []
                for ds in pipeline_datasets(loader):
                    with DefaultScope.overwrite_default_scope(ds.get('_scope_', scope)):
                        composed = Compose([dict(t) for t in ds.pipeline])
                    names += [type(t).__name__ for t in composed.transforms]
                pipelines[split] = names
    entry['pipelines'] = pipelines
    train = cfg.get('train_dataloader') or {}
    entry['train_sampler'] = (train.get('sampler') or {}).get('type')
    entry['train_dataset'] = (train.get('dataset') or {}).get('type')
    init = (cfg.model.get('backbone') or {}).get('init_cfg')
    entry['backbone_init'] = None if init is None else dict(init)
    return entry


CLIP = 'vqkd/vqkd_vit-base_clip-teacher_100e_in1k.py'
DINO = 'vqkd/vqkd_vit-base_dino-teacher_100e_in1k.py'
PROBES = {'beitv2/benchmarks/beitv2_vit-base_linear-100e_in1k.py': 768,    # cls token
          'beit/benchmarks/beit_vit-base_linear-layer9-100e_in1k.py': 1536}  # cls + mean


@pytest.mark.parametrize('name', NAMES, ids=NAMES)
def test_config_builds(name):
    entry = built(name)
    assert entry['params'] > 0
    if entry['type'] == 'BEiT':
        # Pretraining configs draw each sample's mask in the pipeline, seeded per sample.
        assert entry['pipelines']['train'][-2:] == ['MIMMask', 'PackMIMInputs']
        assert entry['train_sampler'] == 'mmbeit.SeededSampler'
        assert entry['train_dataset'] in ('mmbeit.SeededDataset', 'SeededDataset')
    if '/benchmarks/' in name:
        # Transfer configs: a train and a test pipeline, and each starts from a checkpoint
        # that our own runs write.
        assert {'train', 'val', 'test'} <= set(entry['pipelines'])
        init = entry['backbone_init']
        assert init['type'] == 'Pretrained' and init['prefix'] == 'backbone.'
        assert init['checkpoint'].startswith('work_dirs/')
    if name == CLIP:
        assert entry['type'] == 'VQKD'
        # The teacher is frozen: what the optimiser sees is the tokenizer alone. ViT-B
        # encoder (85.8M) + 3-block decoder + task layers, and no codebook (a buffer).
        assert 90e6 < entry['trainable'] < 115e6 < entry['params']
    if name.startswith('tokenizers/'):
        assert entry['type'] == {'tokenizers/dalle_dvae_openai.py': 'DALLETokenizer',
                                 'tokenizers/vqkd_vit-base_clip_official.py': 'VQKD'}[name]
    if name == 'beitv2/benchmarks/beitv2_vit-base_upernet-160k_ade20k-512.py':
        assert entry['type'] == 'EncoderDecoder'
        assert 'RandomCrop' in entry['pipelines']['train']
        assert 'PackSegInputs' in entry['pipelines']['test']
    if name == 'beitv2/benchmarks/beitv2_vit-base_ft-100e_in1k.py':
        assert {'RandAugment', 'RandomErasing'} <= set(entry['pipelines']['train'])
        # ViT-B (85.8M) + a 1000-way head, all trainable
        assert 86e6 < entry['trainable'] == entry['params'] < 87.5e6
    if name in PROBES:
        # only the linear head is in the optimiser
        assert entry['trainable'] == PROBES[name] * 1000 + 1000


def test_the_set_of_configs():
    """Counts over all configs: nothing went missing from configs/."""
    assert len(NAMES) >= 6
    for name in (CLIP, DINO, *PROBES, 'tokenizers/dalle_dvae_openai.py',
                 'tokenizers/vqkd_vit-base_clip_official.py',
                 'beitv2/benchmarks/beitv2_vit-base_upernet-160k_ade20k-512.py',
                 'beitv2/benchmarks/beitv2_vit-base_ft-100e_in1k.py'):
        assert name in NAMES
    pretrain = [n for n in NAMES if built(n)['type'] == 'BEiT']  # cached by the cases above
    assert len(pretrain) == 8  # beit: base, large; beitv2: 2 x 2; demo: VQ-KD, HOG tokens
    assert len([n for n in NAMES if '/benchmarks/' in n]) >= 10


def test_dino_tokenizer_trains_a_wider_decode_task_layer_than_clip():
    # 768-d decode task layer (DINO's features) instead of 512 (CLIP's)
    assert built(DINO)['trainable'] > built(CLIP)['trainable']

