"""Tests for mmbeit/models/tokenizers/vqkd.py: the VQ-KD tokenizer of BEiT v2.

The reference for tokenization is mmpretrain's ``VQKD`` (mmpretrain/models/selfsup/
beit.py: its own BEiTViT encoder, task layer and NormEMAVectorQuantizer), built tiny with
random weights; our state dict is mapped into its layout by a mapping written here. The
checkpoint layout is the official unilm file's, written out key by key from unilm
beit2/modeling_vqkd.py's modules (docs/contracts.md, "VQ-KD checkpoint layout").
Everything runs tiny on CPU."""
import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F

from mmbeit.checkpoint import CheckpointMismatchError, CheckpointReadError
from mmbeit.models.backbones.beit_vit import BEiTViT
from mmbeit.models.tokenizers.teachers import DINOViT
from mmbeit.models.tokenizers.vqkd import VQKD

D, LAYERS, HEADS, FF = 32, 2, 4, 64        # encoder
DD, DLAYERS, DHEADS, DFF = 24, 1, 2, 48    # decoder
IMG, PATCH, K, CODE = 32, 8, 16, 8
GRID = IMG // PATCH
N = GRID * GRID
ENC = dict(arch=dict(embed_dims=D, num_layers=LAYERS, num_heads=HEADS, feedforward_channels=FF),
           img_size=IMG, patch_size=PATCH)
DEC = dict(arch=dict(embed_dims=DD, num_layers=DLAYERS, num_heads=DHEADS,
                     feedforward_channels=DFF))
TEACHER_ARCH = dict(embed_dims=20, num_layers=1, num_heads=2, feedforward_channels=40)
BEIT_TEACHER = dict(type='BEiTViT', arch=TEACHER_ARCH, img_size=IMG, patch_size=PATCH,
                    use_abs_pos_emb=True, rel_pos_bias=None, layer_scale_init_value=0.,
                    out_type='featmap', final_norm=True)
DINO_TEACHER = dict(type='DINOViT', arch=TEACHER_ARCH, img_size=IMG, patch_size=PATCH)


# One intra-op thread (tests/conftest.py): tiny ops run faster so, also on a busy machine.
pytestmark = pytest.mark.usefixtures('one_thread')


def build(**kw):
    cfg = dict(encoder=ENC, decoder=DEC,
               quantizer=dict(num_tokens=K, embed_dims=CODE, kmeans_init=False))
    cfg.update(kw)
    return VQKD(**cfg)


@torch.no_grad()
def randomize_(model, seed=0):
    """Well-scaled random weights (non-trivial norms and biases) and a random unit
    codebook; the teacher, if any, keeps its own weights."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.startswith('teacher.'):
            continue
        if p.ndim == 1 and 'norm' in name and name.endswith('weight'):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
    model.quantize.embedding.weight.copy_(
        F.normalize(torch.randn(K, CODE, generator=gen), dim=1))
    return model


def images(batch=3, seed=1, size=IMG):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def capture_input(module):
    """Forward pre-hook that records the first positional input of ``module``."""
    seen = []
    handle = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    return seen, handle


# ---------------------------------------------------------------------------------------
# 1. token ids = mmpretrain's VQKD
# ---------------------------------------------------------------------------------------
def to_mmpretrain_layout(sd):
    """Our (official-layout) state dict -> mmpretrain's VQKD keys; decoder dropped."""
    out = {}
    for key, value in sd.items():
        if key.startswith(('decoder.', 'decode_task_layer.')):
            continue
        m = re.match(r'encoder\.blocks\.(\d+)\.(.*)$', key)
        if m:
            rest = m.group(2)
            for old, new in (('norm1.', 'ln1.'), ('norm2.', 'ln2.'),
                             ('mlp.fc1.', 'ffn.layers.0.0.'), ('mlp.fc2.', 'ffn.layers.1.')):
                if rest.startswith(old):
                    rest = new + rest[len(old):]
            key = f'encoder.layers.{m.group(1)}.{rest}'
        elif key.startswith('encoder.patch_embed.proj.'):
            key = 'encoder.patch_embed.projection.' + key[len('encoder.patch_embed.proj.'):]
        elif key.startswith('encoder.fc_norm.'):
            key = 'encoder.ln1.' + key[len('encoder.fc_norm.'):]
        out[key] = value
    return out


def mmpretrain_vqkd():
    pytest.importorskip('mmpretrain')
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS as MP_MODELS

    # The encoder settings of mmpretrain's beitv2 configs (vqkd_encoder), made tiny.
    encoder = dict(arch=ENC['arch'], img_size=IMG, patch_size=PATCH, in_channels=3,
                   out_indices=-1, drop_rate=0., drop_path_rate=0.,
                   norm_cfg=dict(type='LN', eps=1e-6), final_norm=True, out_type='featmap',
                   with_cls_token=True, frozen_stages=-1, use_abs_pos_emb=True,
                   use_rel_pos_bias=False, use_shared_rel_pos_bias=False,
                   layer_scale_init_value=0., interpolate_mode='bicubic', patch_cfg=dict(),
                   layer_cfgs=dict(), init_cfg=None)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MP_MODELS.build(dict(type='VQKD', encoder_config=encoder, num_embed=K,
                                    embed_dims=CODE, quantize_kmeans_init=False))


def test_tokens_match_mmpretrain_vqkd():
    """mmpretrain's VQKD is the reference: same weights (mapped to its layout here),
    input in [-1, 1] for mmpretrain (its second_mean/std = 127.5) and [0, 1] for ours."""
    ours = randomize_(build(with_decoder=False)).eval()
    ref = mmpretrain_vqkd().eval()
    ref.load_state_dict(to_mmpretrain_layout(ours.state_dict()), strict=True)

    x = images(batch=4)
    ours_in, h1 = capture_input(ours.quantize)
    ref_in, h2 = capture_input(ref.quantize)
    with torch.no_grad():
        ids = ours.tokenize(x)
        ref_ids = ref(x * 2 - 1)
        # Fed our [0, 1] input unchanged, mmpretrain gives other features.
        ref(x)
    h1.remove()
    h2.remove()
    assert len(ours_in) == 1 and len(ref_in) == 2
    assert ids.shape == ref_ids.shape == (4, N) and ids.dtype == torch.long
    assert torch.equal(ids, ref_ids)
    assert len(set(ids.flatten().tolist())) > 3  # not a degenerate one-token case
    ref_z = ref_in[0].permute(0, 2, 3, 1).reshape(4, N, CODE)  # [B, d, h, w] -> [B, N, d]
    torch.testing.assert_close(ours_in[0], ref_z, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ref_in[-1].permute(0, 2, 3, 1).reshape(4, N, CODE),
                              ours_in[0], atol=1e-3)


# ---------------------------------------------------------------------------------------
# 2. checkpoint layout
# ---------------------------------------------------------------------------------------
def official_state_dict(out_dims=12, seed=0):
    """The unilm VQ-KD checkpoint layout (unilm modeling_vqkd.py) at the tiny sizes, random values,
    with the teacher / scaling-layer / loss keys the official file carries."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {}

    def vit(prefix, dims, layers, ff, in_ch, patch):
        shapes.update({f'{prefix}cls_token': (1, 1, dims),
                       f'{prefix}pos_embed': (1, N + 1, dims),
                       f'{prefix}patch_embed.proj.weight': (dims, in_ch, patch, patch),
                       f'{prefix}patch_embed.proj.bias': (dims, )})
        for i in range(layers):
            b = f'{prefix}blocks.{i}.'
            shapes.update({b + 'norm1.weight': (dims, ), b + 'norm1.bias': (dims, ),
                           b + 'attn.q_bias': (dims, ), b + 'attn.v_bias': (dims, ),
                           b + 'attn.qkv.weight': (3 * dims, dims),
                           b + 'attn.proj.weight': (dims, dims), b + 'attn.proj.bias': (dims, ),
                           b + 'norm2.weight': (dims, ), b + 'norm2.bias': (dims, ),
                           b + 'mlp.fc1.weight': (ff, dims), b + 'mlp.fc1.bias': (ff, ),
                           b + 'mlp.fc2.weight': (dims, ff), b + 'mlp.fc2.bias': (dims, )})
        shapes.update({f'{prefix}fc_norm.weight': (dims, ), f'{prefix}fc_norm.bias': (dims, )})

    vit('encoder.', D, LAYERS, FF, 3, PATCH)
    vit('decoder.', DD, DLAYERS, DFF, CODE, 1)
    shapes.update({
        'quantize.embedding.weight': (K, CODE), 'quantize.embedding.cluster_size': (K, ),
        'quantize.embedding.embed_avg': (K, CODE), 'quantize.cluster_size': (K, ),
        'encode_task_layer.0.weight': (D, D), 'encode_task_layer.0.bias': (D, ),
        'encode_task_layer.2.weight': (CODE, D), 'encode_task_layer.2.bias': (CODE, ),
        'decode_task_layer.0.weight': (DD, DD), 'decode_task_layer.0.bias': (DD, ),
        'decode_task_layer.2.weight': (out_dims, DD), 'decode_task_layer.2.bias': (out_dims, ),
        # not tokenizer weights: ignored by the loader
        'teacher.visual.conv1.weight': (7, 3, 4, 4), 'teacher.visual.proj': (7, 5),
        'scaling_layer.shift': (1, 3, 1, 1), 'scaling_layer.scale': (1, 3, 1, 1),
        'loss_fn.weight': (3, ),
    })
    sd = {k: 0.1 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    sd['quantize.embedding.weight'] = F.normalize(sd['quantize.embedding.weight'], dim=1)
    sd['quantize.embedding.initted'] = torch.tensor([1.])
    return sd


JUNK = ('teacher.', 'scaling_layer.', 'loss_fn.', 'quantize.embedding.cluster_size',
        'quantize.embedding.embed_avg')


def test_official_checkpoint_loads_strictly(tmp_path):
    sd = official_state_dict()
    path = tmp_path / 'vqkd_official.pth'
    torch.save({'model': sd}, path)
    model = build(checkpoint=str(path), decoder_out_dims=12)
    model.init_weights()
    ours = model.state_dict()
    expected = {k: v for k, v in sd.items() if not k.startswith(JUNK)}
    assert set(ours) == set(expected)
    for k, v in expected.items():
        assert torch.equal(ours[k], v), k
    # mmbeit writes the official names.
    assert 'encoder.fc_norm.weight' in ours and 'encoder.norm.weight' not in ours
    assert 'decoder.fc_norm.bias' in ours
    assert torch.equal(model.encoder.norm.weight, sd['encoder.fc_norm.weight'])

    # What the load left out, and why, is in its report (one row per reason).
    report = build(decoder_out_dims=12).load_tokenizer(str(path))
    assert report.source == repr(str(path)) and report.ok and not report.fresh
    dropped = dict(report.dropped)
    assert list(dropped) == [
        '[teacher.visual.conv1.weight, teacher.visual.proj, scaling_layer.shift, ... '
        '(5 in all)]', 'quantize.embedding.cluster_size, quantize.embedding.embed_avg']
    assert 'not tokenizer weights' in dropped[list(dropped)[0]]
    assert 'never reads' in dropped[list(dropped)[1]]
    assert sorted(report.loaded) == sorted(expected)

    # One key missing: an error naming the file and the key.
    del sd['encode_task_layer.2.bias']
    bad = tmp_path / 'broken.pth'
    torch.save({'model': sd}, bad)
    with pytest.raises(CheckpointMismatchError) as err:
        build(checkpoint=str(bad), decoder_out_dims=12).init_weights()
    assert str(err.value).startswith(
        f"'{bad}' does not fit VQKD:\n"
        '  1 missing (in the model, not in the file): [encode_task_layer.2.bias]\n')
    assert str(err.value).endswith('Check that the encoder / decoder / quantizer sizes of '
                                   'the config match the file.')
    # A surplus key too.
    sd = dict(official_state_dict(), **{'encoder.extra': torch.zeros(1)})
    torch.save({'state_dict': sd}, bad)
    with pytest.raises(CheckpointMismatchError,
                       match=r'1 unexpected \(in the file, not in the model\): '
                             r'\[encoder\.extra\]'):
        build(decoder_out_dims=12).load_tokenizer(str(bad))
    # A truncated file: the error names it.
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(CheckpointReadError, match=f"^cannot read checkpoint '{bad}'"):
        build(decoder_out_dims=12).load_tokenizer(str(bad))


def test_teacher_keeps_its_weights_and_is_not_saved(tmp_path):
    path = tmp_path / 'vqkd_official.pth'
    torch.save({'model': official_state_dict(out_dims=20)}, path)
    model = build(teacher=DINO_TEACHER)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.load_tokenizer(str(path))
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert not any(k.startswith('teacher.') for k in model.state_dict())


def test_round_trip_gives_equal_tokens(tmp_path):
    model = randomize_(build()).eval()
    path = tmp_path / 'ours.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    loaded = build(checkpoint=str(path))
    loaded.init_weights()
    loaded.eval()
    x = images()
    assert torch.equal(loaded.tokenize(x), model.tokenize(x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_target_generator_loads_full_checkpoint_and_stays_frozen(tmp_path):
    sd = official_state_dict()
    path = tmp_path / 'vqkd_official.pth'
    torch.save({'model': sd}, path)
    gen = build(with_decoder=False, frozen=True, checkpoint=str(path))
    gen.init_weights()
    assert gen.decoder is None and gen.decode_task_layer is None
    report = build(with_decoder=False).load_tokenizer(str(path))
    dropped = dict(report.dropped)
    decoder_row = next(k for k, why in dropped.items() if 'with_decoder=False' in why)
    n_dec = sum(k.startswith(('decoder.', 'decode_task_layer.')) for k in sd)
    assert decoder_row.startswith('[decoder.') and decoder_row.endswith(f'({n_dec} in all)]')
    assert not any(k.startswith(('decoder.', 'decode_task_layer.')) for k in gen.state_dict())
    assert torch.equal(gen.quantize.codebook, sd['quantize.embedding.weight'])
    gen.train()
    assert not any(m.training for m in gen.modules())
    assert not any(p.requires_grad for p in gen.parameters())
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    ids = gen(images(), mode='tensor')
    assert ids.shape == (3, N)
    for k, v in gen.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(RuntimeError, match='built with with_decoder=False'):
        gen.decode(torch.zeros(1, N, CODE))


def test_tokenize_never_updates_the_codebook_in_training_mode():
    model = randomize_(build()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.tokenize(images())
    assert model.quantize.training and model.training  # mode restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(model.quantize.usage_counts, torch.zeros(K, dtype=torch.float64))
    # ... while a training forward does move it.
    model.encode(images())
    assert not torch.equal(model.quantize.codebook, before['quantize.embedding.weight'])
    model.eval()
    samples = model(images(), data_samples=[_Sample() for _ in range(3)], mode='predict')
    assert torch.equal(torch.stack([s.tokens for s in samples]), model.tokenize(images()))
    with pytest.raises(ValueError, match=r"mode must be 'loss', 'tensor' or 'predict'"):
        model(images(), mode='feat')


class _Sample:
    def set_field(self, value, name):
        setattr(self, name, value)


# ---------------------------------------------------------------------------------------
# 3. loss, gradients, teacher
# ---------------------------------------------------------------------------------------
def test_loss_equals_independent_cosine_loss_and_gradients():
    model = randomize_(build(teacher=DINO_TEACHER, quantizer=dict(
        num_tokens=K, embed_dims=CODE, kmeans_init=False, beta=0.5)))
    ref = copy.deepcopy(model).eval()
    model.train()
    assert model.training and not model.teacher.training
    assert not any(m.training for m in model.teacher.modules())
    x = images()
    losses = model(x, mode='loss')
    assert set(losses) == {'loss_rec', 'loss_quant'}

    with torch.no_grad():
        z_q, loss_q, _ = ref.encode(x)
        rec = ref.decode(z_q)
        target = ref.teacher_features(x)
    cos = (rec * target).sum(-1) / (rec.norm(dim=-1) * target.norm(dim=-1))
    torch.testing.assert_close(losses['loss_rec'], (1 - cos).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses['loss_quant'], loss_q, rtol=1e-5, atol=1e-7)
    assert rec.shape == target.shape == (3, N, TEACHER_ARCH['embed_dims'])

    (losses['loss_rec'] + losses['loss_quant']).backward()
    for name in ('encoder.patch_embed.proj.weight', 'encoder.blocks.0.attn.qkv.weight',
                 'encoder.cls_token', 'encode_task_layer.0.weight',
                 'encode_task_layer.2.bias', 'decoder.patch_embed.proj.weight',
                 'decoder.blocks.0.mlp.fc2.weight', 'decode_task_layer.2.weight'):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    codebook = model.quantize.embedding.weight
    assert not codebook.requires_grad and codebook.grad is None
    assert all(p is not codebook for p in model.parameters())


def test_teacher_normalisation():
    model = build(teacher=DINO_TEACHER)
    assert isinstance(model.teacher, DINOViT)
    x = images()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.teacher((x - mean) / std)
    torch.testing.assert_close(model.teacher_features(x), expected, rtol=0, atol=0)

    m, s = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    model = build(teacher=BEIT_TEACHER, teacher_mean=m, teacher_std=s)
    assert type(model.teacher) is BEiTViT  # mmbeit's, from mmbeit's registry
    assert model.decode_task_layer[2].out_features == TEACHER_ARCH['embed_dims']
    # A plain backbone as teacher is frozen and kept in eval mode by VQKD itself.
    model.train()
    assert model.encoder.training and not any(m.training for m in model.teacher.modules())
    assert not any(p.requires_grad for p in model.teacher.parameters())
    with torch.no_grad():
        out = model.teacher((x - torch.tensor(m).view(1, 3, 1, 1))
                            / torch.tensor(s).view(1, 3, 1, 1))[-1]
    torch.testing.assert_close(model.teacher_features(x), out.flatten(2).transpose(1, 2),
                               rtol=0, atol=0)
    # Given values override the teacher's own.
    model = build(teacher=DINO_TEACHER, teacher_mean=m, teacher_std=s)
    with torch.no_grad():
        expected = model.teacher((x - torch.tensor(m).view(1, 3, 1, 1))
                                 / torch.tensor(s).view(1, 3, 1, 1))
    torch.testing.assert_close(model.teacher_features(x), expected, rtol=0, atol=0)


def test_teacher_errors():
    with pytest.raises(ValueError) as err:
        build(teacher=BEIT_TEACHER)
    assert str(err.value) == ('BEiTViT has no mean/std attributes; give teacher_mean and '
                              'teacher_std (in [0, 1] pixel units) to VQKD')
    # A teacher with patch 4 sees an 8x8 grid; the tokenizer has 4x4.
    fine = dict(BEIT_TEACHER, patch_size=4)
    model = build(teacher=fine, teacher_mean=(0.5, ) * 3, teacher_std=(0.5, ) * 3)
    with pytest.raises(ValueError) as err:
        model.loss(images(batch=2))
    assert str(err.value) == ('the teacher gives features of shape (2, 64, 20), but the '
                              'tokenizer has 16 tokens (4x4); match the patch grids or set '
                              'teacher_input_size')
    # Resizing the teacher input fixes it.
    model = build(teacher=dict(fine, img_size=16), teacher_mean=(0.5, ) * 3,
                  teacher_std=(0.5, ) * 3, teacher_input_size=16)
    assert model.teacher_features(images(batch=2)).shape == (2, N, 20)
    # Decoder width different from the teacher's.
    model = build(teacher=DINO_TEACHER, decoder_out_dims=7)
    with pytest.raises(ValueError, match=r'^decoder output has 7 channels, the teacher 20; '
                                         r'set decoder_out_dims=20$'):
        model.loss(images(batch=1))
    with pytest.raises(RuntimeError, match='this VQKD has no teacher'):
        build().teacher_features(images())


def test_wrong_input_size():
    model = build()
    with pytest.raises(ValueError) as err:
        model.tokenize(torch.rand(1, 3, 24, 24))
    assert str(err.value) == 'VQKD expects images [B, 3, 32, 32] in [0, 1], got (1, 3, 24, 24)'
    with pytest.raises(ValueError, match=r'got \(3, 32, 32\)$'):
        model.tokenize(torch.rand(3, 32, 32))


# ---------------------------------------------------------------------------------------
# 4. fp32 task layer under bf16 autocast
# ---------------------------------------------------------------------------------------
def test_encode_task_layer_runs_in_fp32_under_bf16_autocast():
    model = randomize_(build(teacher=DINO_TEACHER)).train()
    seen = {}

    def record(name, value):
        seen.setdefault(name, value)  # returns None: the hooks leave outputs alone

    hooks = [
        model.encoder.blocks[-1].mlp.fc1.register_forward_hook(
            lambda m, a, out: record('encoder', out.dtype)),
        model.encode_task_layer.register_forward_hook(
            lambda m, a, out: record('task', (a[0].dtype, out.dtype))),
        model.quantize.register_forward_pre_hook(
            lambda m, a: record('quantizer', a[0].dtype)),
    ]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model.loss(images(batch=2))
    for h in hooks:
        h.remove()
    assert seen['encoder'] == torch.bfloat16  # autocast is on in the encoder's linears...
    assert seen['task'] == (torch.float32, torch.float32)  # ... but not the task layer
    assert seen['quantizer'] == torch.float32
    assert losses['loss_rec'].dtype == losses['loss_quant'].dtype == torch.float32
    assert model.quantize.codebook.dtype == torch.float32


# ---------------------------------------------------------------------------------------
# 5. training reduces the loss
# ---------------------------------------------------------------------------------------
def test_a_few_adamw_steps_reduce_the_reconstruction_loss():
    torch.manual_seed(0)
    model = build(teacher=DINO_TEACHER, quantizer=dict(num_tokens=K, embed_dims=CODE,
                                                       kmeans_init=True))
    model.init_weights()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.99), weight_decay=1e-4)
    x = images(batch=4)
    history = []
    for _ in range(15):
        losses = model(x, mode='loss')
        opt.zero_grad()
        (losses['loss_rec'] + losses['loss_quant']).backward()
        opt.step()
        history.append(losses['loss_rec'].item())
    assert model.quantize.embedding.initted.item() == 1
    assert history[-1] < 0.7 * history[0], history
