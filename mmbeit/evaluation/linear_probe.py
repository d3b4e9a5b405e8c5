"""A quick linear probe: multinomial logistic regression on standardised features.

The "linear probing" of self-supervised learning (BEiT paper, arXiv 2106.08254, section 3.3
and appendix: a linear classifier on frozen features) in its cheapest form, to compare
checkpoints in seconds on a CPU rather than to reproduce a paper number: the whole train
set in one batch, full-batch L-BFGS in float64, no augmentation.

* features are standardised with the train set's mean and (unbiased) std, kept in the
  probe and applied to any other set;
* loss = mean cross-entropy (optionally class-balanced: every class present in the train
  set weighs the same, whatever its count) + ``l2`` * ||W||^2 (the bias is not penalised);
  with C = 1 / (2 * l2 * n) this is scikit-learn's ``LogisticRegression(C=C)`` objective
  divided by C * n, so both have the same minimiser;
* weights start at zero and L-BFGS (strong-Wolfe line search) is deterministic: there is
  no random draw anywhere, so equal inputs give bitwise equal probes on the same machine
  and thread count (no seed to set).

Used by ``tools/analysis_tools/knn_eval.py --probe`` (image features) and
``tools/analysis_tools/patch_probe.py`` (patch features of segmentation data).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ['LinearProbe', 'fit_linear_probe']


@dataclass
class LinearProbe:
    """A fitted probe: logits = standardise(x) @ weight.T + bias (all float64)."""
    weight: torch.Tensor  # [K, C]
    bias: torch.Tensor  # [K]
    mean: torch.Tensor  # [C] train mean
    std: torch.Tensor  # [C] train std (unbiased, clamped at 1e-6)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, C] -> [M, K] (float64)."""
        return ((x.double() - self.mean) / self.std) @ self.weight.t() + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, C] -> predicted class [M] (long)."""
        return self.logits(x).argmax(1)


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-3,
                     max_iter: int = 300, balanced: bool = False,
                     tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9
                     ) -> LinearProbe:
    """Fit a multinomial logistic regression on x [M, C], labels y [M] in 0..num_classes-1.

    Args:
        l2: L2 penalty on the weights (not the bias), added to the mean loss. Must be >= 0.
        max_iter: L-BFGS iterations (one full-batch pass each, plus line-search passes).
        balanced: weigh every class present in ``y`` equally (class weight
            n / (present classes * count)); absent classes get no weight.
        tolerance_grad, tolerance_change: L-BFGS stops when the largest gradient entry,
            or the change of the loss or of the parameters, is below these (torch's
            defaults).

    Returns:
        :class:`LinearProbe` (float64 tensors on x's device).
    """
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or not len(y):
        raise ValueError(f'fit_linear_probe: x must be [M, C] and y [M] with M > 0, got x '
                         f'{list(x.shape)} and y {list(y.shape)}')
    if y.dtype not in (torch.int64, torch.int32) or int(y.min()) < 0 or \
            int(y.max()) >= num_classes:
        raise ValueError(f'fit_linear_probe: labels must be integers in 0..{num_classes - 1}, '
                         f'got {y.dtype} in [{int(y.min())}, {int(y.max())}]')
    if not l2 >= 0:
        raise ValueError(f'fit_linear_probe: l2 must be >= 0, got {l2}')
    y = y.long()
    x = x.double()
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(mean)
    xs = (x - mean) / std
    class_w = None
    if balanced:
        counts = torch.bincount(y, minlength=num_classes).double()
        present = (counts > 0).sum()
        class_w = torch.where(counts > 0, counts.sum() / (present * counts.clamp_min(1)),
                              torch.zeros_like(counts))
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device,
                         requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter,
                            tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                            line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ weight.t() + bias, y, weight=class_w)
        loss = loss + l2 * (weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, std)
