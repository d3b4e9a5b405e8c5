"""mmbeit.models.utils.trunc_normal_: the truncated normal of BEiT's init, in one pass."""
import math

import pytest
import torch

from mmbeit.models.utils import trunc_normal_


def test_matches_the_truncated_normal_and_torch_rejection_sampler():
    torch.manual_seed(0)
    ours = trunc_normal_(torch.empty(1_000_000), std=0.02, a=-0.02, b=0.02)
    ref = torch.nn.init.trunc_normal_(torch.empty(1_000_000), std=0.02, a=-0.02, b=0.02)
    assert ours.min() >= -0.02 and ours.max() <= 0.02
    # moments of N(0, s^2) truncated at +-s (closed form)
    pdf1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    mass = math.erf(1 / math.sqrt(2))
    want_std = 0.02 * math.sqrt(1 - 2 * pdf1 / mass)
    assert ours.mean().item() == pytest.approx(0, abs=3e-5)
    assert ours.std().item() == pytest.approx(want_std, rel=3e-3)
    # same distribution as torch's rejection sampler: deciles agree
    q = torch.linspace(0.1, 0.9, 9)
    torch.testing.assert_close(torch.quantile(ours[:200_000], q),
                               torch.quantile(ref[:200_000], q), atol=4e-4, rtol=0)


def test_bounds_around_a_mean():
    torch.manual_seed(0)
    x = trunc_normal_(torch.empty(200_000), std=1.0, a=-1.0, b=3.0, mean=1.0)
    assert x.min() >= -1 and x.max() <= 3
    assert x.mean().item() == pytest.approx(1.0, abs=0.01)  # [a, b] is symmetric about it
    y = trunc_normal_(torch.empty(200_000), std=1.0, a=0.0, b=5.0)  # a half-normal
    assert y.min() >= 0 and y.mean().item() == pytest.approx(math.sqrt(2 / math.pi), abs=0.01)
    with pytest.raises(ValueError, match='std > 0 and a < b'):
        trunc_normal_(torch.empty(3), std=0.02, a=0.02, b=-0.02)
