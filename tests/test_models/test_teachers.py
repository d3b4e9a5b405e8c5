"""Tests for mmbeit/models/tokenizers/teachers.py (the frozen VQ-KD teachers) and
tools/model_converters/clip_to_state_dict.py.

``CLIPViT`` is checked against transformers' CLIP vision model (weights mapped into
OpenAI's layout here, independently of the code under test) and ``DINOViT`` against timm's
``VisionTransformer``; both with tiny random models on CPU."""
import math
import os
import os.path as osp
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from _helpers import ROOT, tool_main

from mmbeit.checkpoint import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointReadError,
    load_state_dict_checked,
)
from mmbeit.models.tokenizers import teachers as teachers_mod
from mmbeit.models.tokenizers.teachers import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CLIPLayerNorm,
    CLIPViT,
    DINOViT,
    QuickGELU,
    TeacherCheckpointError,
)
from mmbeit.registry import MODELS

TOOL = osp.join(ROOT, 'tools', 'model_converters', 'clip_to_state_dict.py')

WIDTH, LAYERS, HEADS, OUT, IMG, PATCH = 32, 2, 4, 16, 32, 8
CLIP_ARCH = dict(width=WIDTH, layers=LAYERS, heads=HEADS, output_dim=OUT)
DINO_ARCH = dict(embed_dims=WIDTH, num_layers=LAYERS, num_heads=HEADS,
                 feedforward_channels=4 * WIDTH)
NUM_PATCHES = (IMG // PATCH) ** 2


def tiny_clip(**kw):
    return CLIPViT(arch=CLIP_ARCH, img_size=IMG, patch_size=PATCH, **kw)


def tiny_dino(**kw):
    return DINOViT(arch=DINO_ARCH, img_size=IMG, patch_size=PATCH, **kw)


@torch.no_grad()
def randomize_(model, seed=0):
    """Well-scaled random weights with nonzero biases and non-trivial LayerNorms."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1 and ('norm' in name or 'ln' in name) and name.endswith('weight'):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        elif p.ndim == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        else:
            fan_in = p[0].numel() if p.ndim > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
    return model


def images(batch=2, seed=1):
    return torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def collect_logs(monkeypatch):
    logs = []
    monkeypatch.setattr(teachers_mod, 'print_log', lambda msg, *a, **k: logs.append(msg))
    return logs


# ---------------------------------------------------------------------------------------
# CLIPViT vs transformers' CLIP vision model
# ---------------------------------------------------------------------------------------
def hf_clip():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, image_size=IMG, patch_size=PATCH, projection_dim=OUT,
        hidden_act='quick_gelu', layer_norm_eps=1e-5, attn_implementation='eager')
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    return randomize_(model, seed=3)


def hf_to_openai(hf_sd):
    """HF CLIPVisionModelWithProjection state dict -> OpenAI ``visual`` layout."""
    v = 'vision_model.'
    sd = OrderedDict()
    sd['conv1.weight'] = hf_sd[v + 'embeddings.patch_embedding.weight']
    sd['class_embedding'] = hf_sd[v + 'embeddings.class_embedding']
    sd['positional_embedding'] = hf_sd[v + 'embeddings.position_embedding.weight']
    for part in ('weight', 'bias'):
        sd[f'ln_pre.{part}'] = hf_sd[f'{v}pre_layrnorm.{part}']
        sd[f'ln_post.{part}'] = hf_sd[f'{v}post_layernorm.{part}']
    for i in range(LAYERS):
        src, dst = f'{v}encoder.layers.{i}.', f'transformer.resblocks.{i}.'
        for part in ('weight', 'bias'):
            sd[f'{dst}attn.in_proj_{part}'] = torch.cat(
                [hf_sd[f'{src}self_attn.{n}_proj.{part}'] for n in ('q', 'k', 'v')])
            sd[f'{dst}attn.out_proj.{part}'] = hf_sd[f'{src}self_attn.out_proj.{part}']
            sd[f'{dst}ln_1.{part}'] = hf_sd[f'{src}layer_norm1.{part}']
            sd[f'{dst}ln_2.{part}'] = hf_sd[f'{src}layer_norm2.{part}']
            sd[f'{dst}mlp.c_fc.{part}'] = hf_sd[f'{src}mlp.fc1.{part}']
            sd[f'{dst}mlp.c_proj.{part}'] = hf_sd[f'{src}mlp.fc2.{part}']
    sd['proj'] = hf_sd['visual_projection.weight'].t().contiguous()  # [width, out]
    assert len(sd) == len(hf_sd) - 2 * 2 * LAYERS  # q, k, v (weight, bias) -> in_proj
    return sd


@torch.no_grad()
def test_clip_matches_transformers():
    hf = hf_clip()
    ours = tiny_clip()
    ours.load_state_dict(hf_to_openai(hf.state_dict()), strict=True)
    x = images()
    out = hf(pixel_values=x)
    want = hf.vision_model.post_layernorm(out.last_hidden_state)[:, 1:] \
        @ hf.visual_projection.weight.t()
    got = ours(x)
    assert got.shape == (2, NUM_PATCHES, OUT)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the cls row of the same computation is HF's image embedding: same blocks, same LN
    assert torch.allclose(out.image_embeds, hf.visual_projection(
        hf.vision_model.post_layernorm(out.last_hidden_state[:, 0])), atol=1e-6)


def test_clip_layout_and_attributes():
    model = tiny_clip()
    sd = model.state_dict()
    assert sd['conv1.weight'].shape == (WIDTH, 3, PATCH, PATCH) and 'conv1.bias' not in sd
    assert sd['class_embedding'].shape == (WIDTH, )
    assert sd['positional_embedding'].shape == (NUM_PATCHES + 1, WIDTH)
    assert sd['proj'].shape == (WIDTH, OUT)
    assert sd['transformer.resblocks.1.attn.in_proj_weight'].shape == (3 * WIDTH, WIDTH)
    assert sd['transformer.resblocks.1.attn.in_proj_bias'].shape == (3 * WIDTH, )
    assert len(sd) == 8 + 12 * LAYERS
    assert isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, nn.LayerNorm))
    assert CLIPViT.mean == CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIPViT.std == CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    assert model.out_channels == OUT and model.patch_size == PATCH
    assert model.patch_resolution == (IMG // PATCH, IMG // PATCH)


@torch.no_grad()
def test_clip_default_is_vit_b16():
    model = CLIPViT()
    sd = model.state_dict()
    assert len(sd) == 152  # the number of visual.* tensors of OpenAI's ViT-B/16
    assert sd['positional_embedding'].shape == (197, 768)
    assert sd['conv1.weight'].shape == (768, 3, 16, 16)
    assert sd['proj'].shape == (768, 512)
    assert model.out_channels == 512 and model.patch_size == 16
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 196, 512)


def test_quick_gelu_and_fp32_layer_norm():
    x = torch.linspace(-4, 4, 9)
    assert torch.allclose(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    ln = CLIPLayerNorm(8)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    y = torch.randn(3, 8).to(torch.bfloat16)
    out = ln(y)
    assert out.dtype == torch.bfloat16
    want = nn.functional.layer_norm(y.float(), (8, ), ln.weight, ln.bias, 1e-5)
    assert torch.equal(out, want.to(torch.bfloat16))


def test_clip_grid_mismatch_raises():
    with pytest.raises(ValueError, match='grid'):
        tiny_clip()(torch.randn(1, 3, IMG + PATCH, IMG))


# ---------------------------------------------------------------------------------------
# DINOViT vs timm's VisionTransformer
# ---------------------------------------------------------------------------------------
def timm_vit(num_classes=0, seed=5):
    vit = pytest.importorskip('timm.models.vision_transformer')
    model = vit.VisionTransformer(
        img_size=IMG, patch_size=PATCH, embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS,
        mlp_ratio=4.0, qkv_bias=True, class_token=True, no_embed_class=False,
        num_classes=num_classes, global_pool='token').eval()
    randomize_(model, seed)
    with torch.no_grad():  # a large key bias: it must not matter
        for blk in model.blocks:
            blk.attn.qkv.bias[WIDTH:2 * WIDTH].normal_(0, 3.0)
    return model


def test_timm_vit_settings_match():
    model = timm_vit()
    assert model.norm.eps == 1e-6 and isinstance(model.fc_norm, nn.Identity)
    act = model.blocks[0].mlp.act
    assert isinstance(act, nn.GELU) and act.approximate == 'none'
    ours = tiny_dino()
    assert all(m.eps == 1e-6 for m in ours.modules() if isinstance(m, nn.LayerNorm))
    assert type(ours.blocks[0].mlp.act) is nn.GELU and ours.blocks[0].mlp.act.approximate == \
        'none'
    assert ours.blocks[0].gamma_1 is None and ours.rel_pos_bias is None
    assert ours.blocks[0].attn.relative_position_bias_table is None


@torch.no_grad()
def test_dino_matches_timm_with_k_bias():
    timm_model = timm_vit()
    ours = tiny_dino()
    sd = timm_model.state_dict()
    assert sd['blocks.0.attn.qkv.bias'][WIDTH:2 * WIDTH].abs().max() > 1  # k bias is there
    report = load_state_dict_checked(ours, sd, source='timm', log=False)
    assert [k for k, _ in report.adapted] == [f'blocks.*.attn.qkv.bias ({LAYERS})']
    assert report.ok and not report.dropped and not report.fresh
    # the same through a plain strict load_state_dict (no report: the note is logged)
    tiny_dino().load_state_dict(sd, strict=True)
    x = images()
    want = timm_model.forward_features(x)[:, 1:]
    got = ours(x)
    assert got.shape == (2, NUM_PATCHES, WIDTH)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the same with the key bias zeroed in timm: softmax ignores it
    for blk in timm_model.blocks:
        blk.attn.qkv.bias[WIDTH:2 * WIDTH] = 0
    torch.testing.assert_close(timm_model.forward_features(x)[:, 1:], want,
                               atol=1e-5, rtol=1e-5)
    qkv = sd['blocks.1.attn.qkv.bias']
    assert torch.equal(ours.blocks[1].attn.q_bias, qkv[:WIDTH])
    assert torch.equal(ours.blocks[1].attn.v_bias, qkv[2 * WIDTH:])


@torch.no_grad()
def test_dino_drops_head_and_loads_file(tmp_path):
    timm_model = timm_vit(num_classes=10)
    path = tmp_path / 'dino.pth'
    torch.save(timm_model.state_dict(), path)
    ours = tiny_dino(checkpoint=str(path))
    assert ours.loaded_from == str(path) and ours.is_init
    report = ours.load_report
    assert report.source == repr(str(path)) and report.ok
    assert [k for k, _ in report.dropped] == ['head.* (2)']
    assert sorted(report.loaded) == sorted(ours.state_dict())
    x = images()
    torch.testing.assert_close(ours(x), timm_model.forward_features(x)[:, 1:],
                               atol=1e-5, rtol=1e-5)


def test_dino_attributes():
    model = tiny_dino()
    assert DINOViT.mean == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert DINOViT.std == IMAGENET_STD == (0.229, 0.224, 0.225)
    assert model.out_channels == WIDTH and model.patch_size == PATCH
    with pytest.raises(ValueError, match='grid'):
        model(torch.randn(1, 3, IMG, IMG - PATCH))


# ---------------------------------------------------------------------------------------
# frozen, registry, init_cfg
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('cls', ['CLIPViT', 'DINOViT'])
def test_registry_build_and_frozen(cls):
    arch = CLIP_ARCH if cls == 'CLIPViT' else DINO_ARCH
    model = MODELS.build(dict(type=cls, arch=arch, img_size=IMG, patch_size=PATCH))
    assert type(model).__name__ == cls
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    out = model(images(1))
    assert out.shape == (1, NUM_PATCHES, model.out_channels) and not out.requires_grad


@pytest.mark.parametrize('make', [tiny_clip, tiny_dino])
def test_init_cfg_pretrained_is_strict(tmp_path, make):
    src = randomize_(make(), seed=7)
    full = {'teacher.' + k: v for k, v in src.state_dict().items()}
    full['decoder.x'] = torch.zeros(1)
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': full}, path)
    model = make(init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='teacher.'))
    assert model.loaded_from is None
    model.init_weights()
    assert model.loaded_from == str(path)
    x = images(1)
    assert torch.equal(model(x), src(x))
    model.init_weights()  # a second call keeps the weights
    assert torch.equal(model(x), src(x))

    name = sorted(src.state_dict())[-1]
    del full['teacher.' + name]
    torch.save({'state_dict': full}, path)
    model = make(init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='teacher.'))
    with pytest.raises(CheckpointMismatchError) as err:
        model.init_weights()
    assert name in str(err.value) and str(path) in str(err.value)
    assert err.value.report.missing == [name] and not err.value.report.unexpected
    assert "keys under 'teacher.', 1 other key(s) left out" in str(err.value)

    # a prefix no key carries
    model = make(init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='student.'))
    with pytest.raises(TeacherCheckpointError,
                       match=f"^no key of '{path}' starts with prefix 'student.'"):
        model.init_weights()


def test_init_cfg_validation(tmp_path):
    with pytest.raises(ValueError, match='Pretrained'):
        tiny_clip(init_cfg=dict(type='Normal', std=0.01))
    with pytest.raises(ValueError, match='not both'):
        tiny_clip(checkpoint='a.pth', init_cfg=dict(type='Pretrained', checkpoint='a.pth'))
    with pytest.raises(CheckpointNotFoundError,
                       match=f"^checkpoint '{tmp_path}/missing.pth' does not exist"):
        tiny_clip(checkpoint=str(tmp_path / 'missing.pth'))
    # a truncated file: the error names it
    path = tmp_path / 'cut.pth'
    torch.save(tiny_clip().state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointReadError, match=f"^cannot read checkpoint '{path}'"):
        tiny_clip(checkpoint=str(path))


def test_random_teacher_warns(monkeypatch):
    logs = collect_logs(monkeypatch)
    model = tiny_clip()
    model.init_weights()
    assert model.loaded_from is None and any('RANDOM' in m for m in logs)


# ---------------------------------------------------------------------------------------
# strict loading
# ---------------------------------------------------------------------------------------
def test_clip_missing_unexpected_and_shape_errors(tmp_path):
    sd = randomize_(tiny_clip()).state_dict()
    path = tmp_path / 'clip.pth'
    broken = OrderedDict(sd)
    del broken['ln_post.bias']
    broken['extra.weight'] = torch.zeros(2)
    torch.save(broken, path)
    with pytest.raises(CheckpointMismatchError) as err:
        tiny_clip(checkpoint=str(path))
    assert str(err.value).splitlines() == [
        f"'{path}' does not fit CLIPViT:",
        '  1 missing (in the model, not in the file): [ln_post.bias]',
        '  1 unexpected (in the file, not in the model): [extra.weight]',
        'The teacher is loaded strictly: check its settings (arch, patch_size, img_size) '
        'against the checkpoint.']

    wrong = OrderedDict(sd)
    wrong['proj'] = torch.zeros(WIDTH, OUT + 1)
    torch.save(wrong, path)
    with pytest.raises(CheckpointMismatchError) as err:
        tiny_clip(checkpoint=str(path))
    assert str(path) in str(err.value)
    assert err.value.report.mismatched == [('proj', (WIDTH, OUT + 1), (WIDTH, OUT))]


@pytest.mark.parametrize('make', [tiny_clip, tiny_dino])
def test_teacher_file_missing_one_key_names_the_key_and_the_file(tmp_path, make):
    src = randomize_(make(), seed=3)
    sd = src.state_dict()
    name = sorted(sd)[len(sd) // 2]
    del sd[name]
    path = tmp_path / 'teacher.pth'
    torch.save({'model': sd}, path)  # unilm's container
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        model.load_checkpoint(str(path))
    assert str(err.value).startswith(
        f"'{path}' does not fit {type(model).__name__}:\n"
        f'  1 missing (in the model, not in the file): [{name}]\n')
    assert err.value.report.missing == [name] and model.loaded_from is None
    assert torch.equal(model.state_dict()[name], before[name])


def test_dino_missing_key_raises(tmp_path):
    sd = timm_vit().state_dict()
    del sd['blocks.1.mlp.fc2.weight']
    path = tmp_path / 'dino.pth'
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError, match=r'\[blocks\.1\.mlp\.fc2\.weight\]'):
        tiny_dino(checkpoint=str(path))

    # timm's qkv.bias and our q_bias for the same block: refused, naming the file
    sd = timm_vit().state_dict()
    sd['blocks.0.attn.q_bias'] = torch.zeros(WIDTH)
    torch.save(sd, path)
    with pytest.raises(TeacherCheckpointError, match=f"^'{path}': blocks.0.attn.qkv.bias and "
                       'blocks.0.attn.q_bias/v_bias are both in the state dict'):
        tiny_dino(checkpoint=str(path))


def full_clip_state_dict(visual_sd):
    """A full CLIP state dict: ``visual.*`` plus text-tower keys (which reuse the names
    ``positional_embedding`` and ``transformer.resblocks.i.*``)."""
    sd = OrderedDict(('visual.' + k, v) for k, v in visual_sd.items())
    text = OrderedDict([
        ('positional_embedding', torch.randn(7, 24)),
        ('text_projection', torch.randn(24, OUT)),
        ('logit_scale', torch.ones([])),
        ('token_embedding.weight', torch.randn(50, 24)),
        ('transformer.resblocks.0.attn.in_proj_weight', torch.randn(72, 24)),
        ('ln_final.weight', torch.ones(24)),
        ('ln_final.bias', torch.zeros(24)),
    ])
    sd.update(text)
    return sd, len(text)


@torch.no_grad()
def test_full_clip_state_dict_loads(tmp_path):
    src = randomize_(tiny_clip(), seed=11)
    full, n_text = full_clip_state_dict(src.state_dict())
    path = tmp_path / 'clip_full.pth'
    torch.save(full, path)
    model = tiny_clip(checkpoint=str(path))
    x = images(1)
    assert torch.equal(model(x), src(x))
    report = model.load_report
    assert [k for k, _ in report.adapted] == ['visual.*']
    assert [k for k, _ in report.dropped] == [f"{n_text} other key(s) under ''"]
    assert report.ok and len(report.loaded) == len(src.state_dict())

    # a missing visual key is still reported
    del full['visual.ln_pre.weight']
    torch.save(full, path)
    with pytest.raises(CheckpointMismatchError, match=r'missing .*\[ln_pre\.weight\]'):
        tiny_clip(checkpoint=str(path))


class _FakeCLIP(nn.Module):
    """A CLIP-shaped module for TorchScript: ``visual`` plus a text part."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        self.token_embedding = nn.Embedding(10, 8)
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x):
        return self.visual(x) * self.logit_scale


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')
def test_teacher_refuses_torchscript_archive(tmp_path):
    path = tmp_path / 'ViT-B-16.pt'
    traced = torch.jit.trace(_FakeCLIP(tiny_clip()), images(1), check_trace=False)
    traced.save(str(path))
    with pytest.raises(TeacherCheckpointError, match='clip_to_state_dict'):
        tiny_clip(checkpoint=str(path))


# ---------------------------------------------------------------------------------------
# tools/model_converters/clip_to_state_dict.py
# ---------------------------------------------------------------------------------------
def _main(*args):
    return tool_main(TOOL, *args)


@torch.no_grad()
def test_converter_plain_dict(tmp_path):
    src = randomize_(tiny_clip(), seed=13)
    full, _ = full_clip_state_dict(src.state_dict())
    src_path, dst = tmp_path / 'clip.pt', tmp_path / 'out' / 'visual.pth'
    torch.save(full, src_path)
    assert _main(src_path, dst) == ''
    out = torch.load(dst, map_location='cpu', weights_only=True)
    assert list(out) == list(src.state_dict())
    assert all(torch.equal(out[k], v) for k, v in src.state_dict().items())
    assert os.listdir(dst.parent) == ['visual.pth']  # no temporary file left
    model = tiny_clip(checkpoint=str(dst))
    assert torch.equal(model(images(1)), src(images(1)))

    # refuses to overwrite, unless --force
    assert 'exists' in _main(src_path, dst)
    torch.save({'visual.' + k: v * 0 for k, v in src.state_dict().items()}, src_path)
    assert _main(src_path, dst, '--force') == ''
    out = torch.load(dst, map_location='cpu', weights_only=True)
    assert all(not v.any() for v in out.values())


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')
@torch.no_grad()
def test_converter_torchscript_archive(tmp_path):
    visual = randomize_(tiny_clip(), seed=17).half()
    fake = _FakeCLIP(visual)
    src_path, dst = tmp_path / 'ViT-B-16.pt', tmp_path / 'visual.pth'
    x = images(1)
    torch.jit.trace(fake, x.half(), check_trace=False).save(str(src_path))
    assert teachers_mod.is_torchscript_archive(str(src_path))
    proc = subprocess.run([sys.executable, TOOL, str(src_path), str(dst)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'left out 2 other key(s)' in proc.stdout and 'float16' in proc.stdout
    out = torch.load(dst, map_location='cpu', weights_only=True)
    assert set(out) == set(visual.state_dict())
    assert all(torch.equal(out[k], v) for k, v in visual.state_dict().items())
    model = tiny_clip(checkpoint=str(dst))  # fp16 weights into the fp32 teacher
    assert torch.equal(model(x), visual.float()(x))

    assert 'exists' in _main(src_path, dst)


def test_converter_rejects_non_clip(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'visual.layer1.0.conv1.weight': torch.zeros(1), 'logit_scale': torch.ones([])},
               path)
    assert 'not a CLIP ViT' in _main(path, tmp_path / 'out.pth')
    assert not osp.exists(tmp_path / 'out.pth')
    assert 'does not exist' in _main(tmp_path / 'nope.pt', tmp_path / 'out.pth')
    # a truncated source: the error names the file
    path.write_bytes(path.read_bytes()[:200])
    assert _main(path, tmp_path / 'out.pth').startswith(
        f"error: cannot read checkpoint '{path}' (200 bytes)")
    assert sorted(os.listdir(tmp_path)) == ['resnet.pth']
