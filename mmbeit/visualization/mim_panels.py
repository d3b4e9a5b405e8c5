"""What a BEiT / BEiT v2 pretraining model does with one image: the panels of the MIM
picture (tools/analysis_tools/visualize_mim.py), computed and then drawn.

Computation (:func:`mim_panels`, numpy arrays and numbers, no drawing):

1. **view**: the photo's largest centred box with the view's aspect ratio, resized by
   the config's own ``BEiTMaskedViews`` filters to the backbone view and the tokenizer
   view (:func:`centre_views`). For a square view this is "resize the shorter side,
   centre crop". No colour jitter, no flip, no random crop: the same photo always gives
   the same views, whatever its size or aspect ratio.
2. **mask**: one draw of the config's mask generator (BEiT v1 blockwise, BEiT v2
   blockwise with an exact count, ...) after ``np.random.seed(seed)``; numpy's global
   RNG state is restored afterwards (:func:`seeded_mask`).
3. **masked view**: the view with the masked patches replaced by mid-grey (the backbone
   sees the mask token there).
4. **target tokens**: the tokenizer's ids of the tokenizer view (``model.targets``, the
   ids the loss uses).
5. **predicted tokens**: the argmax of the MIM head's logits (``model.mim_logits``) at the
   masked positions, whether each equals the target, and the masked-token accuracy
   ``mean(pred == target)`` over the masked positions (what training logs as ``acc`` /
   ``acc_1``, for one image).
6. **reconstructions** (DALL-E dVAE built with its decoder only): the decoder's image of
   the target tokens, and of the target tokens with the predictions put in at the masked
   positions.
7. **attention**: the cls token's attention to the patches in the chosen blocks, averaged
   over the chosen heads, on the *unmasked* view (``BEiTViT.get_attention_maps``).

The model's own data preprocessor normalises the views (``MIMDataPreprocessor``: mean /
std for the backbone view, /255 for the tokenizer view), as in a training step.

Drawing (:func:`draw_mim_panels`, :func:`save_mim_panels`): matplotlib's Agg canvas (no
display), one figure per image, written atomically (``mmbeit.checkpoint.atomic_output``).
Token ids get fixed colours (:func:`token_palette` of the vocabulary size), so the same id
has the same colour in every picture of a model.
"""
import math
import os
from numbers import Integral
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from mmbeit.checkpoint import atomic_output

__all__ = ['find_pretraining_steps', 'build_pretraining_steps', 'centre_views',
           'seeded_mask', 'attention_indices', 'mim_panels', 'panel_names', 'token_palette',
           'draw_mim_panels', 'save_mim_panels']

#: the grey that stands for a masked patch in the masked-input panel
MASK_GREY = 128


# ----------------------------------------------------------------------------- config

def _step_type(step: Any) -> str:
    kind = step.get('type', '') if isinstance(step, dict) else ''
    return kind.rsplit('.', 1)[-1] if isinstance(kind, str) else getattr(kind, '__name__', '')


def _pipelines(dataset: Any):
    """Every ``pipeline`` list inside a dataset config and its wrappers (``dataset=``,
    ``datasets=[...]``), depth first."""
    if isinstance(dataset, dict):
        if isinstance(dataset.get('pipeline'), (list, tuple)):
            yield dataset['pipeline']
        yield from _pipelines(dataset.get('dataset'))
        for child in dataset.get('datasets') or ():
            yield from _pipelines(child)


def find_pretraining_steps(cfg) -> Tuple[dict, dict]:
    """The ``BEiTMaskedViews`` and ``MIMMask`` steps of the config's pretraining pipeline
    (``train_dataloader.dataset``, looking inside dataset wrappers), as dicts.

    Raises ValueError (naming the config) when no pipeline there has both.
    """
    loader = cfg.get('train_dataloader') if hasattr(cfg, 'get') else None
    dataset = loader.get('dataset') if isinstance(loader, dict) else None
    for pipeline in _pipelines(dataset):
        views = [s for s in pipeline if _step_type(s) == 'BEiTMaskedViews']
        masks = [s for s in pipeline if _step_type(s) == 'MIMMask']
        if views and masks:
            return dict(views[0]), dict(masks[0])
    name = getattr(cfg, 'filename', None) or '(given as a Config)'
    raise ValueError(f'config {name} has no pretraining pipeline with BEiTMaskedViews and '
                     'MIMMask in train_dataloader.dataset: give a BEiT / BEiT v2 pretraining '
                     'config (configs/beit/, configs/beitv2/, configs/demo/beit*_demo-64.py), '
                     'whose views and mask generator the pictures use')


def build_pretraining_steps(cfg) -> Tuple[Any, Any, int]:
    """Build the config's views transform and mask generator: returns
    ``(BEiTMaskedViews, mask generator, MIMMask.patch_size)``."""
    from mmengine.registry import DefaultScope

    import mmbeit.datasets  # noqa: F401  (fills mmbeit's TRANSFORMS and TASK_UTILS)
    from mmbeit.registry import TRANSFORMS
    views_cfg, mask_cfg = find_pretraining_steps(cfg)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmbeit')):
        views = TRANSFORMS.build(views_cfg)
        mim_mask = TRANSFORMS.build(mask_cfg)
    return views, mim_mask.generator, mim_mask.patch_size


# ----------------------------------------------------------------------------- inputs

def _check_rgb(image: np.ndarray) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype == np.uint8 and image.shape[0] > 0 and image.shape[1] > 0):
        got = (f'{image.dtype} array of shape {image.shape}' if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise ValueError(f'image must be an H x W x 3 uint8 RGB array (LoadImageRGB().load('
                         f'path) reads one), got {got}')
    return image


def centre_views(image: np.ndarray, views) -> Tuple[np.ndarray, np.ndarray]:
    """The backbone view and the tokenizer view of ``image`` (H x W x 3 uint8 RGB, any
    size): its largest centred box with the backbone view's aspect ratio, resized by
    ``views.resize`` (the config's filters). Returns two H x W x 3 uint8 RGB arrays."""
    image = _check_rgb(image)
    h, w = image.shape[:2]
    vh, vw = views.img_size
    if w * vh > h * vw:                  # wider than the view: keep the full height
        ch, cw = h, max(1, round(h * vw / vh))
    else:
        ch, cw = max(1, round(w * vh / vw)), w
    top, left = (h - ch) // 2, (w - cw) // 2
    region = np.ascontiguousarray(image[top:top + ch, left:left + cw])
    return views.resize(region)


def seeded_mask(generator: Any, grid: Tuple[int, int], seed: int) -> np.ndarray:
    """``generator.sample(grid)`` (bool [h*w], True = masked) after
    ``np.random.seed(seed)``; numpy's global RNG state is restored afterwards."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.ascontiguousarray(generator.sample(tuple(grid)), dtype=bool)
    finally:
        np.random.set_state(state)


def _default_views(model):
    from mmbeit.datasets.transforms import BEiTMaskedViews
    tg = model.target_generator
    size = getattr(tg, 'input_size', None)
    if size is None:
        raise ValueError(f'{type(tg).__name__} has no input_size: pass views=BEiTMaskedViews'
                         '(...) with the tokenizer view size')
    size = tuple(size) if isinstance(size, (tuple, list)) else int(size)
    return BEiTMaskedViews(img_size=tuple(model.backbone.img_size), target_size=size,
                           interpolation='bicubic', target_interpolation='bicubic',
                           color_jitter=None, flip_prob=0.0)


def attention_indices(num_layers: int, num_heads: int, layers: Sequence[int],
                      heads: Optional[Sequence[int]] = None) -> Tuple[list, list]:
    """The blocks (``layers``: 0-based, negative from the end) and heads (None: all) of
    the attention panels as non-negative indices; ValueError naming a bad one."""
    out = []
    for layer in layers:
        if not (isinstance(layer, Integral) and -num_layers <= layer < num_layers):
            raise ValueError(f'attention layer {layer!r} is out of range: the backbone has '
                             f'{num_layers} blocks (0..{num_layers - 1}, or -1 for the last)')
        out.append(int(layer) % num_layers)
    if not out:
        raise ValueError('give at least one attention layer (e.g. -1, the last block)')
    if heads is None:
        return out, list(range(num_heads))
    heads = list(heads)
    bad = [h for h in heads if not (isinstance(h, Integral) and 0 <= h < num_heads)]
    if not heads or bad:
        raise ValueError(f'attention heads {heads!r}: give head indices in 0..{num_heads - 1} '
                         f'(the backbone has {num_heads} heads), or none for all of them')
    return out, [int(h) for h in heads]


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] -> H x W x 3 uint8."""
    arr = images[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return np.rint(arr * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- panels

@torch.no_grad()
def mim_panels(model, image: np.ndarray, mask_generator: Any,
               views=None, seed: int = 0,
               layers: Sequence[int] = (-1, ), heads: Optional[Sequence[int]] = None
               ) -> Dict[str, Any]:
    """Compute the panels of one image (see the module docstring).

    Args:
        model: a ``BEiT`` pretraining model (``mmbeit.apis.init_model`` of a pretraining
            config, its tokenizer's weights loaded), in eval mode.
        image: H x W x 3 uint8 **RGB** array of any size.
        mask_generator: the config's mask generator (``sample(grid)`` draws one mask).
        views: the config's ``BEiTMaskedViews`` (sizes and resize filters); None: the
            backbone's and the tokenizer's input sizes, bicubic.
        seed: numpy seed of the mask draw.
        layers: backbone blocks whose attention is shown (0-based, negative from the end).
        heads: attention heads averaged (None: all).

    Returns:
        dict with ``view`` / ``target_view`` / ``masked_view`` (H x W x 3 uint8),
        ``mask`` (bool [gh, gw]), ``target_tokens`` (int64 [gh, gw]), ``pred_tokens``
        (int64 [gh, gw], the head's argmax at masked positions, -1 elsewhere),
        ``correct`` (bool [gh, gw], False at unmasked positions), ``accuracy`` (float in
        [0, 1]; nan when nothing is masked), ``num_masked``, ``attention``
        ({block: float32 [gh, gw]}, cls -> patches, mean of the heads), ``attention_cls``
        ({block: float32 [heads, N + 1]}, the cls token's attention row of each chosen
        head, cls included, before the average), ``layers``, ``heads``, ``num_heads``
        (the backbone's), ``grid``,
        ``patch_size``, ``vocab_size``, and for a DALL-E tokenizer with a decoder
        ``recon_target`` / ``recon_pred`` (uint8 images of the decoder).
    """
    for attr in ('backbone', 'target_generator', 'mim_logits', 'data_preprocessor'):
        if not hasattr(model, attr):
            raise TypeError(f'mim_panels needs a BEiT pretraining model (mmbeit BEiT: '
                            f'backbone, head, target_generator), got {type(model).__name__} '
                            f'without {attr!r}')
    if not (isinstance(seed, Integral) and 0 <= seed < 2**32):
        raise ValueError(f'seed must be an int in [0, 2**32), got {seed!r}')
    backbone = model.backbone
    views = views if views is not None else _default_views(model)
    layer_ids, head_ids = attention_indices(backbone.num_layers, backbone.num_heads, layers,
                                            heads)

    view, target_view = centre_views(image, views)
    p = backbone.patch_size
    vh, vw = view.shape[:2]
    if vh % p or vw % p:
        raise ValueError(f'the view is {vh}x{vw}, not a multiple of the backbone patch size '
                         f'{p}: the config\'s BEiTMaskedViews.img_size must be one')
    grid = (vh // p, vw // p)
    mask = seeded_mask(mask_generator, grid, seed)
    if mask.shape != (grid[0] * grid[1], ):
        raise ValueError(f'the mask generator gave {mask.shape[0]} entries for the {grid} '
                         'patch grid')

    batch = dict(inputs=[torch.from_numpy(view.transpose(2, 0, 1).copy())[None],
                         torch.from_numpy(target_view.transpose(2, 0, 1).copy())[None],
                         torch.from_numpy(mask)[None]])
    data = model.data_preprocessor(batch, False)
    inputs, mask_t = data['inputs'], data['mask']
    target = model.targets(data['target_inputs'])[0]              # [N]
    pred = model.mim_logits(inputs, mask_t)[0].argmax(-1)         # [N]
    masked = mask_t[0]
    hits = (pred == target) & masked
    num_masked = int(masked.sum())
    accuracy = float(hits.sum()) / num_masked if num_masked else math.nan

    maps = backbone.get_attention_maps(inputs)                    # unmasked view
    attention, attention_cls = {}, {}
    for layer in layer_ids:
        rows = maps[layer][0, head_ids, 0, :].float()             # [heads, N + 1]
        attention_cls[layer] = rows.cpu().numpy()
        attention[layer] = rows[:, 1:].mean(0).reshape(grid).cpu().numpy()

    masked_view = view.copy()
    cells = masked_view.reshape(grid[0], p, grid[1], p, 3)
    grid_mask = mask.reshape(grid)
    cells[grid_mask[:, None, :, None].repeat(p, 1).repeat(p, 3)] = MASK_GREY

    out = dict(view=view, target_view=target_view, masked_view=masked_view, mask=grid_mask,
               target_tokens=target.reshape(grid).cpu().numpy().astype(np.int64),
               pred_tokens=torch.where(masked, pred, -1).reshape(grid).cpu().numpy()
               .astype(np.int64),
               correct=hits.reshape(grid).cpu().numpy(), accuracy=accuracy,
               num_masked=num_masked, attention=attention, attention_cls=attention_cls,
               layers=layer_ids, heads=head_ids, num_heads=backbone.num_heads, grid=grid,
               patch_size=p, vocab_size=int(model.target_generator.vocab_size))

    from mmbeit.models.tokenizers import DALLETokenizer
    tg = model.target_generator
    if isinstance(tg, DALLETokenizer) and tg.decoder is not None:
        mixed = torch.where(masked, pred, target)
        out['recon_target'] = _to_uint8(tg.decode(target[None]))
        out['recon_pred'] = _to_uint8(tg.decode(mixed[None]))
    return out


# ----------------------------------------------------------------------------- drawing

def token_palette(vocab_size: int) -> np.ndarray:
    """A distinct RGB colour per token id, uint8 ``[vocab_size, 3]``, the same for the same
    size: the points of an ``n x n x n`` lattice of levels in [20, 235] (``n`` the
    smallest with ``n**3 >= vocab_size``), shuffled by a fixed permutation so that
    neighbouring ids get unrelated colours. Rows are unique for any size (8192 codes:
    21 levels a channel)."""
    if not (isinstance(vocab_size, Integral) and vocab_size >= 1):
        raise ValueError(f'vocab_size must be an int >= 1, got {vocab_size!r}')
    n = 1
    while n ** 3 < vocab_size:
        n += 1
    levels = np.linspace(20, 235, n).round() if n > 1 else np.array([128.0])
    lattice = np.stack(np.meshgrid(levels, levels, levels, indexing='ij'), -1).reshape(-1, 3)
    order = np.random.default_rng(0).permutation(len(lattice))[:vocab_size]
    return lattice[order].astype(np.uint8)


def _token_image(tokens: np.ndarray, palette: np.ndarray, patch: int,
                 background: Optional[np.ndarray] = None) -> np.ndarray:
    """An image of ``tokens`` ([gh, gw] ids, -1 = none) at the view's resolution, one
    ``patch`` x ``patch`` cell per id in its colour; cells without an id show
    ``background`` (the view) faded towards white."""
    gh, gw = tokens.shape
    known = np.kron(tokens >= 0, np.ones((patch, patch), bool))
    ids = np.kron(np.maximum(tokens, 0), np.ones((patch, patch), np.int64))
    img = palette[ids]
    if background is not None:
        faded = np.rint(0.45 * background.astype(np.float64) + 0.55 * 255).astype(np.uint8)
        img = np.where(known[..., None], img, faded)
    return img


def _write_ids(ax, tokens: np.ndarray, palette: np.ndarray) -> None:
    """Token ids in their cells when the grid is small enough to read them."""
    gh, gw = tokens.shape
    if gh * gw > 144:   # the ids of larger grids do not fit their cells
        return
    size = max(3.5, 9 - 0.35 * max(gh, gw))
    for (i, j), t in np.ndenumerate(tokens):
        if t < 0:
            continue
        grey = palette[t].astype(float) @ np.array([0.299, 0.587, 0.114])
        ax.text(j, i, str(t), ha='center', va='center', fontsize=size,
                color='black' if grey > 140 else 'white')


def panel_names(panels: Dict[str, Any]) -> list:
    """The panels :func:`draw_mim_panels` draws, in order: ``view``, ``mask``,
    ``masked_view``, ``target_tokens``, ``pred_tokens``, then ``recon_target`` and
    ``recon_pred`` when computed, then ``attention_block{n}`` (1-based block numbers)."""
    names = ['view', 'mask', 'masked_view', 'target_tokens', 'pred_tokens']
    names += [k for k in ('recon_target', 'recon_pred') if k in panels]
    return names + [f'attention_block{layer + 1}' for layer in panels['layers']]


def draw_mim_panels(panels: Dict[str, Any], title: Optional[str] = None):
    """A matplotlib ``Figure`` (Agg canvas) of :func:`mim_panels`' output: top row the
    view, the mask, the masked input, the target tokens and the predicted tokens (right
    ones framed green, wrong ones red and crossed); bottom row the dVAE reconstructions
    (when computed) and the attention maps."""
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    gh, gw = panels['grid']
    vh, vw = panels['view'].shape[:2]
    palette = token_palette(panels['vocab_size'])
    p = panels['patch_size']
    top_row = ['view', 'mask', 'masked_view', 'target_tokens', 'pred_tokens']
    bottom = [k for k in panel_names(panels) if k not in top_row]
    ncols = max(5, len(bottom))
    # a fixed layout (matplotlib's constrained layout costs about a second per picture)
    panel, head = 2.5, 0.5                        # inches: square panel, title room
    top = 0.3 if title else 0.0
    fig = Figure(figsize=(panel * ncols + 0.15 * (ncols + 1), 2 * (panel + head) + top),
                 dpi=100)
    FigureCanvasAgg(fig)
    width, height = fig.get_size_inches()
    axes = np.empty((2, ncols), dtype=object)
    for r in range(2):
        for c in range(ncols if r == 0 else len(bottom)):
            x = (0.15 + c * (panel + 0.15)) / width
            y = 1 - (top + r * (panel + head) + head + panel) / height
            axes[r, c] = fig.add_axes((x, y, panel / width, panel / height))
            axes[r, c].set(xticks=[], yticks=[])   # no tick layout at all
            axes[r, c].set_axis_off()
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / height, va='top')
    cell = dict(extent=(-0.5, gw - 0.5, gh - 0.5, -0.5), interpolation='nearest')

    ax = axes[0, 0]
    ax.imshow(panels['view'])
    ax.set_title(f'input view {vh}x{vw}', fontsize=9)

    ax = axes[0, 1]
    ax.imshow(np.where(panels['mask'], 0.25, 0.92), cmap='gray', vmin=0, vmax=1, **cell)
    ax.set_title(f'mask: {panels["num_masked"]} of {gh * gw} patches', fontsize=9)

    ax = axes[0, 2]
    ax.imshow(panels['masked_view'])
    ax.set_title('masked input', fontsize=9)

    ax = axes[0, 3]
    ax.imshow(_token_image(panels['target_tokens'], palette, p), **cell)
    _write_ids(ax, panels['target_tokens'], palette)
    ax.set_title(f'target tokens ({panels["vocab_size"]} codes)', fontsize=9)

    ax = axes[0, 4]
    pred = panels['pred_tokens']
    ax.imshow(_token_image(pred, palette, p, panels['view']), **cell)
    _write_ids(ax, pred, palette)
    halo = [patheffects.Stroke(linewidth=3.4, foreground='white'), patheffects.Normal()]
    for (i, j), ok in np.ndenumerate(panels['correct']):
        if pred[i, j] < 0:
            continue
        colour = '#1a9850' if ok else '#d73027'
        ax.add_patch(Rectangle((j - 0.42, i - 0.42), 0.84, 0.84, fill=False, lw=1.8,
                               edgecolor=colour, path_effects=halo))
        if not ok:
            ax.plot([j - 0.42, j + 0.42], [i - 0.42, i + 0.42], color=colour, lw=1.2,
                    path_effects=halo)
    right = int(panels['correct'].sum())
    acc = panels['accuracy']
    acc_text = 'n/a' if math.isnan(acc) else f'{100 * acc:.1f}%'
    ax.set_title(f'predicted at masked: {acc_text}\n({right} of {panels["num_masked"]} '
                 'right)', fontsize=9)

    chosen = panels['heads']
    heads = (f'{len(chosen)} heads' if len(chosen) == panels['num_heads'] else
             f'head{"s" if len(chosen) > 1 else ""} {",".join(map(str, chosen))}')
    titles = dict(recon_target='dVAE decode: target tokens',
                  recon_pred='dVAE decode: targets,\npredictions at masked')
    for k, key in enumerate(bottom):
        ax = axes[1, k]
        if key.startswith('attention_block'):
            block = int(key[len('attention_block'):])
            amap = panels['attention'][block - 1]
            ax.imshow(panels['view'])
            lo, hi = float(amap.min()), float(amap.max())   # stretched to the colour map
            ax.imshow((amap - lo) / max(hi - lo, 1e-12), cmap='inferno', alpha=0.6, vmin=0,
                      vmax=1, extent=(-0.5, vw - 0.5, vh - 0.5, -0.5),
                      interpolation='nearest')
            ax.set_title(f'cls->patch attention, block {block}\nmean of {heads}, '
                         f'{100 * lo:.2g}-{100 * hi:.2g}%', fontsize=9)
        else:
            ax.imshow(panels[key])
            ax.set_title(titles[key], fontsize=9)
    return fig


def save_mim_panels(panels: Dict[str, Any], path: str, title: Optional[str] = None,
                    dpi: int = 100) -> str:
    """Draw the panels and write them as a PNG to ``path`` atomically; returns the path."""
    path = os.fspath(path)
    fig = draw_mim_panels(panels, title)
    with atomic_output(path, suffix='.png') as tmp:
        fig.savefig(tmp, format='png', dpi=dpi)
    return path
