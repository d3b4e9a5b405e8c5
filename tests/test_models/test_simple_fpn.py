"""SimpleFeaturePyramid and LN2d (issue 17; ViTDet, Li et al. 2022, §3 and Figure 2 (c)):
strides and shapes from a patch-16 and a patch-8 backbone, every level against a by-hand
forward with functional ops, LN2d against a layer norm written out with mean and variance,
the stride-64 level, the errors of bad arguments and the He (fan-out) init of the convs."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _helpers import tiny

from mmbeit.models.necks.simple_fpn import LayerNorm2d, SimpleFeaturePyramid

pytestmark = pytest.mark.usefixtures('one_thread')


def layer_norm_by_hand(x, weight, bias, eps=1e-6):
    """Each pixel of x [B, C, H, W] normalised over its C channels, then scaled / shifted."""
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean)**2).mean(dim=1, keepdim=True)  # biased, as LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def randomize_norms_(neck, seed=0):
    """Norm weights / biases and transposed-conv biases away from their (1, 0) defaults,
    so that a swapped or skipped norm changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in neck.modules():
            if isinstance(m, (nn.LayerNorm, nn.ConvTranspose2d)):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=g) * 0.1)
    return neck


def forward_by_hand(neck, x):
    """Every level of ``neck`` on the map x with functional ops, from the module's own
    parameters: the resampling of each scale (module docstring), then 1 x 1 conv - LN -
    3 x 3 conv - LN, convs without bias."""
    def ln(t, norm):
        return layer_norm_by_hand(t, norm.weight, norm.bias, norm.eps)

    outs = []
    for scale, stage in zip(neck.scale_factors, neck.stages):
        resample, (conv1, norm1), (conv3, norm3) = stage
        if scale == 4:
            up1, norm, _, up2 = resample
            t = F.conv_transpose2d(x, up1.weight, up1.bias, stride=2)
            t = F.conv_transpose2d(F.gelu(ln(t, norm)), up2.weight, up2.bias, stride=2)
        elif scale == 2:
            t = F.conv_transpose2d(x, resample.weight, resample.bias, stride=2)
        elif scale == 1:
            t = x
        else:
            k = round(1 / scale)
            t = F.max_pool2d(x, k, stride=k)
        assert conv1.bias is None and conv3.bias is None
        t = ln(F.conv2d(t, conv1.weight), norm1)
        outs.append(ln(F.conv2d(t, conv3.weight, padding=1), norm3))
    return outs


@pytest.mark.parametrize('patch, scales, num_outs, strides', [
    (16, (4.0, 2.0, 1.0, 0.5), 5, [4, 8, 16, 32, 64]),  # ViTDet, ViT-B/16
    (8, (2.0, 1.0, 0.5, 0.25), 4, [4, 8, 16, 32]),  # a patch-8 backbone (the demo)
    (8, (2.0, 1.0, 0.5, 0.25), 5, [4, 8, 16, 32, 64]),
])
def test_levels_have_the_strides_and_equal_a_by_hand_forward(patch, scales, num_outs, strides):
    img = 128
    backbone = tiny(img_size=img, patch_size=patch, out_type='featmap').eval()
    neck = randomize_norms_(SimpleFeaturePyramid(32, 16, scales, num_outs)).eval()
    neck.init_weights()
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, img, img))
        outs = neck(feats)
        want = forward_by_hand(neck, feats[-1])
    assert feats[-1].shape == (2, 32, img // patch, img // patch)
    assert [tuple(o.shape) for o in outs] == [(2, 16, img // s, img // s) for s in strides]
    for got, exp in zip(outs, want):  # the by-hand levels (the stride-64 one is below)
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
    assert len(want) == len(scales)


@pytest.mark.parametrize('size', [8, 7])
def test_the_stride_64_level_is_every_second_pixel_of_the_stride_32_one(size):
    """detectron2's LastLevelMaxPool: a max-pool with kernel 1, stride 2, i.e. a plain
    subsampling (an odd size keeps the last row / column)."""
    neck = SimpleFeaturePyramid(32, 8, (1.0, 0.5), num_outs=3).eval()
    with torch.no_grad():
        outs = neck([torch.randn(1, 32, 2 * size, 2 * size)])
    assert outs[1].shape[-2:] == (size, size)
    assert torch.equal(outs[2], outs[1][..., ::2, ::2])
    assert outs[2].shape[-1] == (size + 1) // 2


def test_in_index_picks_the_backbone_output():
    neck = SimpleFeaturePyramid(32, 8, (1.0, ), num_outs=1, in_index=0).eval()
    a, b = torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        assert torch.equal(neck([a, b])[0], neck(a)[0])
        assert not torch.equal(neck([a, b])[0], neck(b)[0])
        neck.in_index = -1
        assert torch.equal(neck([a, b])[0], neck(b)[0])
        for index in (2, -3):
            neck.in_index = index
            with pytest.raises(IndexError, match=rf'in_index {index} is out of range for the '
                                                 r"backbone's 2 outputs; set the neck's "
                                                 r"in_index or the backbone's out_indices"):
                neck([a, b])


def test_ln2d_is_a_per_pixel_layer_norm_over_channels():
    norm = LayerNorm2d(6)
    assert norm.eps == 1e-6  # detectron2's LayerNorm
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    x = torch.randn(2, 6, 5, 3) * 3 + 1
    out = norm(x)
    torch.testing.assert_close(out, layer_norm_by_hand(x, norm.weight, norm.bias),
                               rtol=1e-5, atol=1e-5)
    # each pixel on its own: one pixel's channels changed (not by a constant, which the
    # norm removes), only that pixel's output changes
    y = x.clone()
    y[1, :, 2, 1] += torch.arange(6.) * 2
    diff = (norm(y) - out).detach().abs().amax(dim=1)
    assert diff[1, 2, 1] > 0.1 and diff.sum() == diff[1, 2, 1]
    with pytest.raises(ValueError, match=r'LN2d expects an NCHW map, got a tensor of shape '
                                         r'\(2, 6, 5\)'):
        norm(x[..., 0])


@pytest.mark.parametrize('kwargs, message', [
    (dict(scale_factors=(4.0, 3.0)), r'scale_factors must be distinct values from '
     r'\(4, 2, 1, 0.5, 0.25\), largest first, got \[4.0, 3.0\]'),
    (dict(scale_factors=(0.5, 1.0)), r'largest first, got \[0.5, 1.0\]'),
    (dict(scale_factors=(1.0, 1.0)), r'largest first, got \[1.0, 1.0\]'),
    (dict(scale_factors=()), r'largest first, got \[\]'),
    (dict(num_outs=3), r'num_outs must be 4 \(one per scale factor\) or 5 \(plus a stride-2 '
     r'subsampling of the last level\), got 3'),
    (dict(num_outs=6), r'num_outs must be 4 .* got 6'),
    (dict(num_outs=5.0), r'SimpleFeaturePyramid: num_outs must be an int >= 1, got 5.0'),
    (dict(in_index=True), r'in_index must be an int \(an index into the backbone\'s '
     r'outputs, -1 for the last\), got True'),
    (dict(in_index='-1'), r"in_index must be an int .* got '-1'"),
    (dict(in_channels=0), r'SimpleFeaturePyramid: in_channels must be an int >= 1, got 0'),
    (dict(in_channels=32.0), r'in_channels must be an int >= 1, got 32.0'),
    (dict(out_channels=0), r'SimpleFeaturePyramid: out_channels must be an int >= 1, got 0'),
    (dict(in_channels=6), r'in_channels 6 must be divisible by 4 for scale 4 and by 2 for '
     r'scale 2'),
    (dict(in_channels=5, scale_factors=(2.0, 1.0), num_outs=2), r'in_channels 5 must be'),
])
def test_bad_arguments_are_refused(kwargs, message):
    args = dict(in_channels=32, out_channels=8, scale_factors=(4.0, 2.0, 1.0, 0.5), num_outs=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SimpleFeaturePyramid(**args)


def test_odd_channels_are_fine_without_upsampling():
    neck = SimpleFeaturePyramid(6, 8, (1.0, 0.5), num_outs=2)
    assert [o.shape[-1] for o in neck(torch.randn(1, 6, 4, 4))] == [4, 2]


def test_convs_get_he_fan_out_init_and_norms_start_at_one_zero():
    """detectron2's c2_msra_fill: normal with std sqrt(2 / fan_out), fan_out = out * k * k.
    Each conv has >= 4096 weights, so its sample std is within ~1.1 % (1 sigma) of the
    target; 5 % is a loose bound that PyTorch's default init (kaiming uniform on the
    fan-in, a=sqrt(5): 5x to 2.5x smaller here) misses by far."""
    torch.manual_seed(0)
    neck = SimpleFeaturePyramid(256, 64, (4.0, 2.0, 1.0, 0.5), num_outs=5)
    neck.init_weights()
    convs = [m for m in neck.modules() if type(m) is nn.Conv2d]
    assert len(convs) == 8
    for conv in convs:
        out_ch, _, k, _ = conv.weight.shape
        want = math.sqrt(2.0 / (out_ch * k * k))
        w = conv.weight.detach()
        assert abs(w.std().item() / want - 1) < 0.05, (conv, w.std().item(), want)
        assert abs(w.mean().item()) < 0.05 * want
    for m in neck.modules():
        if isinstance(m, nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    # with an init_cfg, the config's initialiser decides and He init is not applied
    other = SimpleFeaturePyramid(256, 64, (1.0, ), num_outs=1,
                                 init_cfg=dict(type='Constant', layer='Conv2d', val=0.5))
    other.init_weights()
    assert all(torch.all(m.weight == 0.5) for m in other.modules() if type(m) is nn.Conv2d)


def test_levels_read_right_through_mmcv_roi_align():
    """mmcv's RoIAlign (CPU) reads its input as contiguous NCHW whatever its strides; a
    level with channels-last strides (LN2d's permute) gave scrambled RoI features, and the
    demo Mask R-CNN's RoI heads could not fit even one batch. Every level must give the RoI
    features torchvision's roi_align computes from the same values."""
    import torchvision
    from mmcv.ops import RoIAlign
    torch.manual_seed(0)
    neck = SimpleFeaturePyramid(64, 32, scale_factors=(2.0, 1.0, 0.5, 0.25)).eval()
    with torch.no_grad():
        outs = neck([torch.randn(2, 64, 16, 16)])
    rois = torch.tensor([[0., 27., 16., 63., 58.], [1., 10., 20., 50., 60.]])
    for level, stride in zip(outs[:4], (4, 8, 16, 32)):
        ours = RoIAlign((7, 7), spatial_scale=1 / stride, sampling_ratio=0)(level, rois)
        ref = torchvision.ops.roi_align(level.contiguous(), rois, (7, 7), 1 / stride,
                                        sampling_ratio=0, aligned=True)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
