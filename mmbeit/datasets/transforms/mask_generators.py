"""Patch-mask generators for BEiT masked image modeling (BEiT paper section 2.3,
Algorithm 1, and section 2.5 for the 75 patches; BEiT v2 paper section 3.1;
docs/method.md "Masking").

Both generators answer the same three calls::

    mask = gen.sample((h, w))        # numpy bool [h*w], row-major, True = masked: one mask
    masks = gen(batch_size, (h, w))  # torch.bool [B, h*w]: B independent masks
    n = gen.num_masked((h, w))       # the target number of masked patches for that grid

Training draws one mask per sample in the data pipeline (:class:`~mmbeit.datasets.
transforms.MIMMask`, in the dataloader workers, next to the crop), not per batch in the
training process.

``BlockwiseMaskGenerator`` is the blockwise masking of the BEiT paper (Algorithm 1) as
unilm implements it (``beit/masking_generator.py`` and ``beit2/masking_generator.py``):
rectangles are placed one after the other until the target count is reached. Each
rectangle takes up to 10 attempts: an area ``s ~ U(min_num_patches, budget)``, a
log-uniform aspect ratio ``r`` in ``[min_aspect, max_aspect]``, ``h = round(sqrt(s*r))``,
``w = round(sqrt(s/r))`` (both strictly smaller than the grid), a top-left corner drawn
uniformly with *inclusive* bounds ``[0, H-h] x [0, W-w]``; the attempt is kept when it
masks between 1 and ``budget`` new patches. ``budget`` is what is still missing, capped
by ``max_num_patches``. The loop stops early when a rectangle cannot be placed.

* BEiT v1 (``exact=False``): the mask is exactly the union of the placed rectangles, so a
  draw may end with fewer patches than the target (at 14x14 with ``min_num_patches=16``
  a third of the draws fall short; 74.5 of 75 patches on average).
* BEiT v2 (``exact=True``, the default): the shortfall is filled with uniformly random
  single unmasked patches, so every mask has exactly the target count. unilm also has a
  branch that unmasks patches when the loop overshoots; it cannot run, because no
  rectangle is accepted that adds more than the remaining count, so here it is an
  assertion instead.

Target count: pass ``mask_ratio`` (count = ``round(ratio * h * w)``; it follows the input
size, e.g. 75 at 14x14 and 98 at 16x16 for the default 75/196) or ``num_masking_patches``
(a fixed count, whatever the grid; it must not exceed ``h * w``). Use ``mask_ratio`` when
the same config serves several resolutions, ``num_masking_patches`` to reproduce a
published setting at its own resolution (unilm: 75 for 224 / patch 16).

Not copied from mmpretrain's ``BEiTMaskGenerator``: it draws the top-left corner with
numpy's exclusive upper bound ``randint(0, H - h)``, which never places a rectangle
against the bottom or right border (with ``exact=False`` the last row and column would
never be masked), and it loops until the count is reached with blocks only instead of
stopping when a rectangle cannot be placed.

``RandomMaskGenerator`` masks exactly ``count`` distinct patches chosen uniformly (the
SimMIM/MAE-style baseline, ``mask_ratio`` 0.4 by default).

Randomness: all draws come from numpy's global RNG (``np.random``); Python's ``random``
and torch's RNG are not touched. In training, :class:`~mmbeit.datasets.SeededDataset`
seeds that RNG for every sample from (run seed, epoch, position in the epoch), so each
sample's mask is reproducible and differs across samples, ranks and workers. The masks of
``gen(B, grid)`` are drawn one after the other and independently: ``gen(4, grid)`` gives
the same masks as four calls of ``gen.sample(grid)`` from the same seed.
"""
import math
from numbers import Integral, Real
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from mmbeit.registry import TASK_UTILS

__all__ = ['BlockwiseMaskGenerator', 'RandomMaskGenerator']

#: unilm's default target: 75 of the 196 patches of a 14x14 grid.
DEFAULT_BLOCKWISE_RATIO = 75 / 196
#: attempts per rectangle before the block loop gives up (unilm's constant).
MAX_ATTEMPTS = 10


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_grid(grid: Sequence[int]) -> Tuple[int, int]:
    grid = tuple(grid) if isinstance(grid, (tuple, list, torch.Size)) else grid
    if not (isinstance(grid, tuple) and len(grid) == 2 and all(_is_int(g) and g > 0
                                                              for g in grid)):
        raise ValueError(f'grid must be a pair of positive ints (h, w), got {grid!r}')
    return int(grid[0]), int(grid[1])


class _MaskGenerator:
    """Target-count handling shared by the generators (see the module docstring)."""

    default_ratio: float = 0.5

    def __init__(self, mask_ratio: Optional[float] = None,
                 num_masking_patches: Optional[int] = None) -> None:
        if mask_ratio is not None and num_masking_patches is not None:
            raise ValueError(
                'give either mask_ratio or num_masking_patches, not both '
                f'(got mask_ratio={mask_ratio}, num_masking_patches={num_masking_patches})')
        if num_masking_patches is not None:
            if not (_is_int(num_masking_patches) and num_masking_patches >= 1):
                raise ValueError(
                    f'num_masking_patches must be an int >= 1, got {num_masking_patches!r}')
            num_masking_patches = int(num_masking_patches)
        else:
            if mask_ratio is None:
                mask_ratio = self.default_ratio
            if not (isinstance(mask_ratio, Real) and not isinstance(mask_ratio, bool)
                    and 0 < mask_ratio <= 1):
                raise ValueError(f'mask_ratio must be in (0, 1], got {mask_ratio!r}')
            mask_ratio = float(mask_ratio)
        self.mask_ratio = mask_ratio
        self.num_masking_patches = num_masking_patches

    def num_masked(self, grid: Sequence[int]) -> int:
        """Number of patches each mask of an ``h x w`` grid should cover."""
        h, w = _check_grid(grid)
        if self.num_masking_patches is not None:
            if self.num_masking_patches > h * w:
                raise ValueError(
                    f'num_masking_patches={self.num_masking_patches} exceeds the {h * w} '
                    f'patches of the {h}x{w} grid')
            return self.num_masking_patches
        return int(round(self.mask_ratio * h * w))

    def _sample(self, h: int, w: int, count: int) -> np.ndarray:
        """One mask, bool [h, w] (subclasses)."""
        raise NotImplementedError

    def sample(self, grid: Sequence[int]) -> np.ndarray:
        """One mask for ``grid``: numpy bool [h*w], row-major, True = masked."""
        h, w = _check_grid(grid)
        return self._sample(h, w, self.num_masked((h, w))).reshape(-1)

    def __call__(self, batch_size: int, grid: Sequence[int]) -> torch.Tensor:
        """``batch_size`` independent masks for ``grid``: torch.bool [B, h*w], row-major."""
        if not (_is_int(batch_size) and batch_size >= 0):
            raise ValueError(f'batch_size must be an int >= 0, got {batch_size!r}')
        h, w = _check_grid(grid)
        count = self.num_masked((h, w))
        masks = np.zeros((batch_size, h * w), dtype=bool)
        for i in range(batch_size):
            masks[i] = self._sample(h, w, count).reshape(-1)
        return torch.from_numpy(masks)

    def _target_repr(self) -> str:
        if self.num_masking_patches is not None:
            return f'num_masking_patches={self.num_masking_patches}'
        return f'mask_ratio={self.mask_ratio:.4f}'


@TASK_UTILS.register_module()
class BlockwiseMaskGenerator(_MaskGenerator):
    """Blockwise masking of BEiT (BEiT paper Algorithm 1).

    Args:
        mask_ratio (float, optional): fraction of the grid to mask; the count is
            ``round(mask_ratio * h * w)``. Defaults to 75/196 when ``num_masking_patches``
            is not given either.
        num_masking_patches (int, optional): fixed count instead of a ratio (<= h*w).
        min_num_patches (int): smallest area drawn for one rectangle. unilm's pretraining
            scripts use 16 (also the default here); unilm's class default is 4, which
            suits small grids (e.g. 8x8).
        max_num_patches (int, optional): cap on the new patches of one rectangle; None
            means no cap beyond the remaining count.
        min_aspect (float): smallest aspect ratio h/w of a rectangle (> 0).
        max_aspect (float, optional): largest aspect ratio; defaults to ``1/min_aspect``.
        exact (bool): True (BEiT v2) tops every mask up to exactly the target with random
            single patches; False (BEiT v1) keeps the union of rectangles, which may fall
            short of the target.

    Draws come from numpy's global RNG (``np.random``); see the module docstring.
    """

    default_ratio = DEFAULT_BLOCKWISE_RATIO

    def __init__(self, mask_ratio: Optional[float] = None,
                 num_masking_patches: Optional[int] = None, min_num_patches: int = 16,
                 max_num_patches: Optional[int] = None, min_aspect: float = 0.3,
                 max_aspect: Optional[float] = None, exact: bool = True) -> None:
        super().__init__(mask_ratio, num_masking_patches)
        if not (_is_int(min_num_patches) and min_num_patches >= 1):
            raise ValueError(f'min_num_patches must be an int >= 1, got {min_num_patches!r}')
        if max_num_patches is not None and not (_is_int(max_num_patches)
                                                and max_num_patches >= min_num_patches):
            raise ValueError(
                f'max_num_patches must be None or an int >= min_num_patches '
                f'({min_num_patches}), got {max_num_patches!r}')
        if not (isinstance(min_aspect, Real) and min_aspect > 0):
            raise ValueError(f'min_aspect must be a number > 0, got {min_aspect!r}')
        if max_aspect is None:
            max_aspect = 1 / min_aspect
        if not (isinstance(max_aspect, Real) and max_aspect >= min_aspect):
            raise ValueError(
                f'max_aspect must be a number >= min_aspect ({min_aspect}), got {max_aspect!r}')
        if not isinstance(exact, bool):
            raise ValueError(f'exact must be a bool, got {exact!r}')
        self.min_num_patches = int(min_num_patches)
        self.max_num_patches = None if max_num_patches is None else int(max_num_patches)
        self.min_aspect = float(min_aspect)
        self.max_aspect = float(max_aspect)
        self.log_aspect = (math.log(self.min_aspect), math.log(self.max_aspect))
        self.exact = exact

    def __repr__(self) -> str:
        return (f'{type(self).__name__}({self._target_repr()}, '
                f'min_num_patches={self.min_num_patches}, '
                f'max_num_patches={self.max_num_patches}, min_aspect={self.min_aspect:.4f}, '
                f'max_aspect={self.max_aspect:.4f}, exact={self.exact})')

    def _place_block(self, mask: np.ndarray,
                     budget: int) -> Tuple[int, Optional[Tuple[int, int, int, int]]]:
        """Try to add one rectangle to ``mask`` (bool [H, W], changed in place).

        Returns ``(new, rect)``: the number of newly masked patches (0 when all
        ``MAX_ATTEMPTS`` attempts failed) and the accepted rectangle
        ``(top, left, h, w)`` or None. Exposed so that tests can check block shapes.
        """
        H, W = mask.shape
        for _ in range(MAX_ATTEMPTS):
            # like Python's random.uniform, numpy accepts budget < min_num_patches and then
            # draws from [budget, min_num_patches]; such areas are mostly rejected below.
            area = np.random.uniform(self.min_num_patches, budget)
            aspect = math.exp(np.random.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h >= H or w >= W:  # strict, as unilm: a block never spans the whole grid
                continue
            top = int(np.random.randint(0, H - h + 1))  # inclusive upper bound H - h
            left = int(np.random.randint(0, W - w + 1))
            window = mask[top:top + h, left:left + w]
            new = h * w - int(window.sum())
            if 0 < new <= budget:
                window[...] = True
                return new, (top, left, h, w)
        return 0, None

    def _sample(self, h: int, w: int, count: int) -> np.ndarray:
        mask = np.zeros((h, w), dtype=bool)
        masked = 0
        while masked < count:
            budget = count - masked
            if self.max_num_patches is not None:
                budget = min(budget, self.max_num_patches)
            new, _ = self._place_block(mask, budget)
            if new == 0:
                break
            masked += new
        # every accepted block adds at most the remaining count, so the loop cannot
        # overshoot (unilm's v2 code has an unmasking branch for this case that never runs)
        assert masked <= count, (masked, count)
        if self.exact and masked < count:
            flat = mask.reshape(-1)
            free = np.flatnonzero(~flat)
            flat[np.random.choice(free, count - masked, replace=False)] = True
        return mask


@TASK_UTILS.register_module()
class RandomMaskGenerator(_MaskGenerator):
    """Uniform random masking: exactly ``count`` distinct patches per mask.

    Args:
        mask_ratio (float, optional): fraction of the grid to mask; 0.4 when
            ``num_masking_patches`` is not given either.
        num_masking_patches (int, optional): fixed count instead of a ratio (<= h*w).

    Draws come from numpy's global RNG (``np.random``); see the module docstring.
    """

    default_ratio = 0.4

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self._target_repr()})'

    def _sample(self, h: int, w: int, count: int) -> np.ndarray:
        mask = np.zeros(h * w, dtype=bool)
        mask[np.random.choice(h * w, count, replace=False)] = True
        return mask.reshape(h, w)
