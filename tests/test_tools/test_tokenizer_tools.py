"""VQ-KD tokenizer training through tools/train.py, and the tokenize / usage analysis
tool (tools/analysis_tools/tokenize_images.py) for VQ-KD and the DALL-E dVAE, each run in
a fresh process on generated demo data."""
import json
import os
import re

import numpy as np
import pytest
import torch
from _helpers import ROOT, free_port, run_tool
from PIL import Image

from mmbeit.checkpoint import read_state_dict

DEMO_CFG = f'{ROOT}/configs/demo/vqkd_vit-tiny-p8_random-teacher_20e_demo-64.py'
TOOL = 'tools/analysis_tools/tokenize_images.py'


def progress_count(res) -> int:
    """The image count of the tool's final progress line (on stderr, never on stdout)."""
    found = re.findall(r'^tokenize_images: (\d+)/(\d+) images in [\d.]+ s '
                       r'\([\d.]+ images/s\)$', res.stderr, re.M)
    assert len(found) == 1 and found[0][0] == found[0][1], res.stderr[-2000:]
    assert 'images/s' not in res.stdout
    return int(found[0][0])


def write_vqkd_config(tmp_path, data, max_iters=12, extra=''):
    imagenet = f'{data}/imagenet'
    text = f'''
_base_ = '{DEMO_CFG}'
_arch = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
model = dict(encoder=dict(arch=_arch), decoder=dict(arch=dict(_arch, num_layers=1)),
             teacher=dict(arch=_arch), quantizer=dict(num_tokens=64, embed_dims=8))
_data = dict(data_root='{imagenet}', metainfo=dict(classes='{imagenet}/meta/classes.txt'))
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, dataset=_data)
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters})
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = []
custom_hooks = [dict(type='CodebookUsageHook', window=4)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=False, interval={max_iters}, max_keep_ckpts=1))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0, deterministic=True)
{extra}
'''
    path = tmp_path / 'vqkd_cfg.py'
    path.write_text(text)
    return path


def scalars(work):
    files = list(work.glob('*/vis_data/scalars.json'))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines()]


@pytest.mark.slow
def test_vqkd_trains_logs_usage_and_tokenizes(tmp_path, demo_data):
    cfg = write_vqkd_config(tmp_path, demo_data)
    work = tmp_path / 'work'
    run_tool(['tools/train.py', cfg, '--work-dir', work])
    rows = [r for r in scalars(work) if 'loss_rec' in r]
    assert len(rows) == 12
    # usage and perplexity are logged every iteration and are valid fractions / counts
    assert all(0 < r['codebook_usage'] <= 1 and 1 <= r['codebook_perplexity'] <= 64
               for r in rows)
    assert np.mean([r['loss_rec'] for r in rows[-3:]]) < np.mean(
        [r['loss_rec'] for r in rows[:3]])

    ckpt = work / 'iter_12.pth'
    state = read_state_dict(ckpt)  # a Runner checkpoint, read weights-only
    # the official layout: fc_norm names, no teacher weights
    assert 'encoder.fc_norm.weight' in state and 'decoder.fc_norm.weight' in state
    assert not any(k.startswith('teacher.') for k in state)
    assert state['quantize.embedding.initted'].item() == 1

    out_dir = tmp_path / 'tokens'
    res = run_tool([TOOL, cfg, f'{demo_data}/imagenet/val', '--checkpoint', ckpt,
                    '--out-dir', out_dir, '--device', 'cpu'])
    report = json.loads((out_dir / 'usage.json').read_text())
    tokens = np.load(out_dir / 'tokens.npy')
    files = (out_dir / 'files.txt').read_text().split()
    assert tokens.shape == (len(files), 64) == (16, 64)
    counts = np.bincount(tokens.ravel(), minlength=64)
    assert report['counts'] == counts.tolist()
    assert report['codes_used'] == int((counts > 0).sum())
    assert f'{report["codes_used"]} / 64' in res.stdout
    assert progress_count(res) == 16
    p = counts[counts > 0] / counts.sum()
    assert report['perplexity'] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))
    assert not (out_dir / 'reconstruction.png').exists()  # VQ-KD decodes features only
    # written atomically: the outputs and nothing else
    assert sorted(os.listdir(out_dir)) == ['files.txt', 'tokens.npy', 'usage.json']

    # The same tokens come from the model loaded in this process.
    from mmbeit.models.tokenizers import VQKD
    _arch = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
    tok = VQKD(encoder=dict(arch=_arch, img_size=64, patch_size=8), with_decoder=False,
               quantizer=dict(num_tokens=64, embed_dims=8), checkpoint=str(ckpt), frozen=True)
    tok.init_weights()
    img = np.asarray(Image.open(files[0]).convert('RGB').resize((64, 64), Image.BICUBIC),
                     dtype=np.float32) / 255.
    ids = tok.tokenize(torch.from_numpy(img).permute(2, 0, 1)[None])
    assert ids[0].tolist() == tokens[0].tolist()

    # existing outputs are not overwritten without --force
    again = run_tool([TOOL, cfg, f'{demo_data}/imagenet/val', '--checkpoint', ckpt,
                      '--out-dir', out_dir, '--device', 'cpu'], check=False)
    assert again.returncode != 0 and '--force' in again.stderr

    # a checkpoint that does not fit the config: refused, naming the file and the keys
    bad = run_tool([TOOL, cfg, f'{demo_data}/imagenet/val', '--checkpoint', ckpt,
                    '--out-dir', tmp_path / 'bad', '--device', 'cpu', '--cfg-options',
                    'model.quantizer.num_tokens=32'], check=False)
    assert bad.returncode != 0 and f"'{ckpt}' does not fit VQKD:" in bad.stderr
    assert 'quantize.embedding.weight [64, 8] in the file, [32, 8] in the model' in bad.stderr
    assert not (tmp_path / 'bad').exists()


def test_dead_code_restart_option_trains(tmp_path, demo_data):
    cfg = write_vqkd_config(tmp_path, demo_data, max_iters=6,
                            extra='model.update(quantizer=dict(num_tokens=64, embed_dims=8, '
                                  'dead_code_threshold=4.0))')
    work = tmp_path / 'work'
    run_tool(['tools/train.py', cfg, '--work-dir', work])
    rows = [r for r in scalars(work) if 'loss_rec' in r]
    restarted = [r['codebook_restarted'] for r in rows]
    assert restarted == sorted(restarted) and restarted[-1] > 0


@pytest.mark.slow
def test_dalle_tool_writes_reconstruction(tmp_path):
    from mmbeit.models.tokenizers.dall_e import DALLEDecoder, DALLEEncoder
    torch.manual_seed(0)
    sizes = dict(n_hid=8, n_blk_per_group=1, vocab_size=32)
    enc, dec = DALLEEncoder(**sizes), DALLEDecoder(n_init=8, **sizes)
    torch.save(enc.state_dict(), tmp_path / 'enc.pth')
    torch.save(dec.state_dict(), tmp_path / 'dec.pth')
    cfg = tmp_path / 'dalle.py'
    cfg.write_text(f'''
_base_ = '{ROOT}/configs/tokenizers/dalle_dvae_openai.py'
model = dict(encoder=dict(n_hid=8, n_blk_per_group=1, vocab_size=32),
             decoder=dict(n_init=8, n_hid=8, n_blk_per_group=1, vocab_size=32),
             input_size=32, encoder_checkpoint=None)
''')
    imgs = tmp_path / 'imgs'
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            imgs / f'{i}.png')
    out_dir = tmp_path / 'out'
    res = run_tool([TOOL, cfg, imgs, '--checkpoint', tmp_path / 'enc.pth',
                    '--decoder-checkpoint', tmp_path / 'dec.pth', '--out-dir', out_dir,
                    '--device', 'cpu', '--num-vis', '2'])
    png = Image.open(out_dir / 'reconstruction.png')
    assert png.size == (2 * 32 + 2, 2 * 32 + 2)  # 2 rows of original | reconstruction
    tokens = np.load(out_dir / 'tokens.npy')
    assert tokens.shape == (3, 16) and tokens.max() < 32
    assert progress_count(res) == 3

    bad = run_tool([TOOL, cfg, tmp_path / 'missing_dir', '--out-dir', tmp_path / 'o2'],
                   check=False)
    assert bad.returncode != 0 and 'missing_dir' in bad.stderr


PROBE = '''
import torch
from mmengine.hooks import Hook
from mmbeit.registry import HOOKS


@HOOKS.register_module()
class StateProbeHook(Hook):
    def __init__(self, out):
        self.out = out

    def after_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        torch.save({'wrapper': type(runner.model).__name__,
                    'state': {k: v.detach().clone() for k, v in model.state_dict().items()}},
                   f'{self.out}/rank{runner.rank}.pt')
'''


@pytest.mark.slow
def test_two_cpu_ranks_keep_one_codebook(tmp_path, demo_data):
    """tools/dist_train.sh with 2 gloo ranks: k-means on rank 0 + broadcast, all-reduced
    EMA statistics and DDP gradients leave both ranks with the same tokenizer."""
    (tmp_path / 'state_probe.py').write_text(PROBE)
    extra = ("custom_imports = dict(imports=['state_probe'], allow_failed_imports=False)\n"
             "custom_hooks = [dict(type='CodebookUsageHook', window=4), "
             f"dict(type='StateProbeHook', out='{tmp_path}')]\n")
    cfg = write_vqkd_config(tmp_path, demo_data, max_iters=4, extra=extra)
    run_tool(['tools/dist_train.sh', cfg, '2', '--work-dir', tmp_path / 'work'],
             env={'PORT': str(free_port()),
                  'PYTHONPATH': f'{ROOT}:{tmp_path}'})
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert r0['wrapper'] == 'MMDistributedDataParallel'
    assert r0['state']['quantize.embedding.initted'].item() == 1
    for k, v in r0['state'].items():
        assert torch.equal(v, r1['state'][k]), k
    # the EMA counts saw both ranks' tokens: 4 iterations x 2 ranks x 8 images x 64 tokens
    # arrive at cluster_size with decay 0.99 (k-means counts of rank 0's first batch seed it)
    assert r0['state']['quantize.cluster_size'].sum().item() == pytest.approx(
        0.99**4 * 8 * 64 + sum(0.01 * 0.99**i * 2 * 8 * 64 for i in range(4)), rel=1e-4)
