"""HOG tokens (mmbeit/models/tokenizers/hog.py): the descriptor against an independent
per-pixel computation, the orientation it gives known patterns, the token rule, fitting,
the codebook file, and the tokenizer inside BEiT pretraining."""
import math

import numpy as np
import pytest
import torch

from mmbeit.checkpoint import CheckpointError, CheckpointMismatchError, CheckpointReadError
from mmbeit.models.tokenizers import HOGTokenizer, patch_hog

pytestmark = pytest.mark.usefixtures('one_thread')


def reference_hog(img: np.ndarray, patch: int, cell: int, bins: int) -> np.ndarray:
    """Per-pixel loops over one image [C, H, W] -> [N, D], written from the definition."""
    c, h, w = img.shape
    cells = np.zeros((h // cell, w // cell, bins))
    for y in range(h):
        for x in range(w):
            best = (-1.0, 0.0, 0.0)
            for ch in range(c):
                gx = img[ch, y, min(x + 1, w - 1)] - img[ch, y, max(x - 1, 0)]
                gy = img[ch, min(y + 1, h - 1), x] - img[ch, max(y - 1, 0), x]
                m = math.hypot(gx, gy)
                if m > best[0]:
                    best = (m, gx, gy)
            m, gx, gy = best
            theta = math.atan2(gy, gx) % math.pi
            pos = theta / math.pi * bins - 0.5
            lo = math.floor(pos)
            frac = pos - lo
            cells[y // cell, x // cell, lo % bins] += m * (1 - frac)
            cells[y // cell, x // cell, (lo + 1) % bins] += m * frac
    cells /= cell * cell
    k = patch // cell
    out = []
    for py in range(h // patch):
        for px in range(w // patch):
            block = cells[py * k:(py + 1) * k, px * k:(px + 1) * k]       # [k, k, bins]
            out.append(block.reshape(-1))
    return np.stack(out)


def stripes(kind: str, size: int = 16, period: int = 4, lo=(0.1, 0.2, 0.3),
            hi=(0.9, 0.7, 0.8)) -> torch.Tensor:
    """[3, size, size] two-colour stripes: 'h' (rows alternate) or 'v' (columns)."""
    y, x = np.mgrid[0:size, 0:size]
    on = ((y if kind == 'h' else x) % period) < period // 2
    img = np.where(on[None], np.asarray(hi)[:, None, None], np.asarray(lo)[:, None, None])
    return torch.from_numpy(img).float()


def test_patch_hog_equals_per_pixel_reference():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 16, 24, generator=g)
    got = patch_hog(imgs, patch_size=8, cell_size=4, bins=9)
    assert got.shape == (2, 2 * 3, 4 * 9)
    for i in range(2):
        ref = reference_hog(imgs[i].double().numpy(), 8, 4, 9)
        np.testing.assert_allclose(got[i].numpy(), ref, rtol=1e-4, atol=1e-6)


def test_patch_hog_orientations_of_stripes():
    # rows alternate: the gradient is vertical (theta = pi / 2), the middle of 9 bins
    h = patch_hog(stripes('h')[None], 8, 4, 9)[0].view(-1, 9).sum(0)
    assert h[4] > 0 and torch.allclose(h[torch.arange(9) != 4], torch.zeros(8))
    # columns alternate: theta = 0 (or pi), half-way between the first and last bins
    v = patch_hog(stripes('v')[None], 8, 4, 9)[0].view(-1, 9).sum(0)
    assert v[0] > 0 and torch.allclose(v[0], v[8])
    assert torch.allclose(v[1:8], torch.zeros(7))
    # a flat image has no gradient
    assert patch_hog(torch.full((1, 3, 16, 16), 0.4), 8, 4, 9).abs().max() == 0


def test_token_rule_matches_a_direct_computation():
    tok = HOGTokenizer(num_tokens=6, input_size=16, flat_threshold=0.3)
    g = torch.Generator().manual_seed(1)
    tok.codebook.copy_(torch.nn.functional.normalize(torch.randn(5, 36, generator=g), dim=1))
    desc = torch.randn(200, 36, generator=g) * torch.rand(200, 1, generator=g) * 0.6
    got = tok.assign(desc)
    for d, t in zip(desc, got.tolist()):
        if d.norm() < 0.3:
            assert t == 0
        else:
            cos = [float(d @ c) / float(d.norm()) for c in tok.codebook]
            assert t == 1 + int(np.argmax(cos))
    assert 0 < (got == 0).sum() < 200  # both branches were exercised


def fitted_tokenizer():
    """Fitted on flat images and h / v stripes in random colours."""
    tok = HOGTokenizer(num_tokens=3, input_size=16)
    g = np.random.default_rng(0)
    imgs = [torch.full((3, 16, 16), 0.5) + 0.002 * torch.randn(3, 16, 16) for _ in range(4)]
    for kind in 'hv':
        for _ in range(4):
            lo, hi = g.uniform(0, 0.3, 3), g.uniform(0.7, 1, 3)
            imgs.append(stripes(kind, lo=lo, hi=hi))
    stats = tok.fit(tok.descriptors(torch.stack(imgs).clamp(0, 1)),
                    generator=torch.Generator().manual_seed(0))
    return tok, stats


def test_fit_separates_orientations_and_ignores_colour():
    tok, stats = fitted_tokenizer()
    assert tok.fitted
    assert stats['flat_fraction'] == pytest.approx(4 / 12)
    assert stats['usage'] == 1.0
    flat = tok.tokenize(torch.full((1, 3, 16, 16), 0.3))
    assert flat.tolist() == [[0] * 4]
    h1 = tok.tokenize(stripes('h')[None])
    h2 = tok.tokenize(stripes('h', lo=(0.9, 0.0, 0.1), hi=(0.2, 0.6, 0.9))[None])
    v1 = tok.tokenize(stripes('v')[None])
    assert h1.unique().numel() == 1 and v1.unique().numel() == 1
    assert torch.equal(h1, h2)                       # other colours, same token
    assert h1[0, 0] != v1[0, 0] and 0 not in (h1[0, 0], v1[0, 0])


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match='num_tokens=1; the flat token'):
        HOGTokenizer(num_tokens=1, input_size=16)
    with pytest.raises(ValueError, match='patch_size=8 is not a multiple of cell_size=3'):
        HOGTokenizer(num_tokens=4, input_size=16, cell_size=3)
    with pytest.raises(ValueError, match=r'input_size=\(20, 20\) is not a multiple'):
        HOGTokenizer(num_tokens=4, input_size=20)
    tok = HOGTokenizer(num_tokens=4, input_size=16)
    with pytest.raises(RuntimeError, match='no codebook: write one with python '
                       'tools/misc/fit_hog_tokenizer.py'):
        tok.tokenize(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r'expects images \[B, 3, 16, 16\]'):
        tok.descriptors(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match='0 of 4 patches are textured'):
        tok.fit(tok.descriptors(torch.full((1, 3, 16, 16), 0.5)))


def save_codebook(path, tok, **meta_changes):
    meta = dict(hog_tokenizer=dict(tok.hparams(), **meta_changes))
    torch.save(dict(state_dict=dict(codebook=tok.codebook.clone()), meta=meta), path)


def test_codebook_file_round_trip_and_refusals(tmp_path):
    tok, _ = fitted_tokenizer()
    path = tmp_path / 'hog.pth'
    save_codebook(path, tok)
    other = HOGTokenizer(num_tokens=3, input_size=16, checkpoint=str(path))
    other.init_weights()
    assert torch.equal(other.codebook, tok.codebook)

    save_codebook(tmp_path / 'thr.pth', tok, flat_threshold=0.1)
    with pytest.raises(ValueError, match=r"other settings; \(file, config\): "
                       r"\{'flat_threshold': \(0.1, 0.05\)\}"):
        HOGTokenizer(num_tokens=3, input_size=16).load_codebook(str(tmp_path / 'thr.pth'))
    fresh = HOGTokenizer(num_tokens=3, input_size=16)
    bad = tmp_path / 'bad.pth'
    torch.save(dict(state_dict=dict(weight=torch.zeros(2))), bad)
    with pytest.raises(CheckpointMismatchError) as err:
        fresh.load_codebook(str(bad))
    msg = str(err.value)
    assert msg.startswith(f'{bad} does not fit HOGTokenizer (3 tokens):')
    assert '1 missing (in the model, not in the file): [codebook]' in msg
    assert '1 unexpected (in the file, not in the model): [weight]' in msg
    assert 'fit_hog_tokenizer.py' in msg and not fresh.fitted

    # a codebook for another vocabulary: reported as a shape, never copied
    torch.save(dict(state_dict=dict(codebook=torch.eye(4, tok.descriptor_dims))), bad)
    with pytest.raises(CheckpointMismatchError) as err:
        fresh.load_codebook(str(bad))
    assert f'codebook [4, {tok.descriptor_dims}] in the file, [2, {tok.descriptor_dims}] ' \
        'in the model' in str(err.value)
    assert not fresh.codebook.any()

    # rows that are not unit vectors
    torch.save(dict(state_dict=dict(codebook=0.1 * tok.codebook)), bad)
    with pytest.raises(ValueError, match=f'^{bad}: the codebook has rows that are not unit '):
        fresh.load_codebook(str(bad))

    # not a state dict, a truncated file, no file: errors that name it
    torch.save(dict(state_dict=dict(codebook=[1, 2])), bad)
    with pytest.raises(CheckpointError, match=rf"^{bad} is not a HOGTokenizer codebook "
                       r"\(not a state dict: entries \[codebook\] are not tensors"):
        fresh.load_codebook(str(bad))
    save_codebook(bad, tok)
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CheckpointReadError, match=f"cannot read checkpoint '{bad}'"):
        fresh.load_codebook(str(bad))
    with pytest.raises(FileNotFoundError, match='no codebook at .*missing.pth; write one'):
        fresh.load_codebook(str(tmp_path / 'missing.pth'))


def test_as_beit_target_generator(tmp_path):
    """In BEiT pretraining the labels are the HOG tokens of the masked patches, and the
    codebook stays out of the pretraining checkpoint."""
    from mmbeit.models.algorithms import BEiT
    tok, _ = fitted_tokenizer()
    path = tmp_path / 'hog.pth'
    save_codebook(path, tok)
    arch = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)
    model = BEiT(
        backbone=dict(type='BEiTViT', arch=arch, img_size=16, patch_size=8,
                      use_mask_token=True, final_norm=True, out_type='raw'),
        head=dict(type='MIMHead', in_channels=32, vocab_size=3),
        target_generator=dict(type='HOGTokenizer', num_tokens=3, input_size=16,
                              checkpoint=str(path)))
    model.init_weights()
    assert not any(k.startswith('target_generator') for k in model.state_dict())
    views = torch.stack([stripes('h'), stripes('v')])
    assert model.targets(views).tolist() == tok.tokenize(views).tolist()
    mask = torch.tensor([[True, False, False, True], [False, True, True, False]])
    out = model.loss((views - 0.5) / 0.25, views, mask)
    assert torch.isfinite(out['loss']) and 0 <= float(out['acc']) <= 100
