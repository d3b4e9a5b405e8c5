"""mmbeit.evaluation.linear_probe: the quick linear probe of knn_eval.py and patch_probe.py."""
import pytest
import torch
import torch.nn.functional as F

from mmbeit.evaluation import fit_linear_probe

pytestmark = pytest.mark.usefixtures('one_thread')


def _toy(n, num_classes=3, dims=5, shift=1.0, seed=0, counts=None):
    """Gaussian features; class k moves feature k by ``shift``."""
    g = torch.Generator().manual_seed(seed)
    if counts is None:
        y = torch.randint(0, num_classes, (n, ), generator=g)
    else:
        y = torch.cat([torch.full((c, ), k) for k, c in enumerate(counts)])
    x = torch.randn(len(y), dims, generator=g, dtype=torch.float64)
    x[:, :num_classes] += F.one_hot(y, num_classes).double() * shift
    return x, y


def test_separable_classes_are_all_named():
    """Four clusters with bounded noise (uniform in +-1 around centres 4 apart on their own
    axis): linearly separable, so train and val are all named."""
    def sample(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (n, ), generator=g)
        x = torch.rand(n, 6, generator=g) * 2 - 1
        x[:, :4] += F.one_hot(y, 4) * 4.
        return x, y

    x, y = sample(300, 0)
    xv, yv = sample(100, 1)
    probe = fit_linear_probe(x, y, 4)
    assert torch.equal(probe.predict(xv), yv)
    assert torch.equal(probe.predict(x), y)


@pytest.mark.parametrize('balanced', [False, True])
def test_same_minimiser_as_sklearn_logistic_regression(balanced):
    """l2 = 1 / (2 C n) makes our objective sklearn's divided by C n (docstring); on the
    standardised features both solvers must find the same weights and biases."""
    sklearn = pytest.importorskip('sklearn.linear_model')
    x, y = _toy(120, counts=[70, 35, 15] if balanced else None)
    c = 0.5
    probe = fit_linear_probe(x, y, 3, l2=1 / (2 * c * len(y)), balanced=balanced,
                             max_iter=1000, tolerance_grad=1e-10, tolerance_change=1e-14)
    xs = ((x - probe.mean) / probe.std).numpy()
    ref = sklearn.LogisticRegression(C=c, tol=1e-10, max_iter=10000,
                                     class_weight='balanced' if balanced else None)
    ref.fit(xs, y.numpy())
    torch.testing.assert_close(probe.weight, torch.from_numpy(ref.coef_), rtol=0, atol=1e-6)
    torch.testing.assert_close(probe.bias, torch.from_numpy(ref.intercept_), rtol=0, atol=1e-6)
    assert torch.equal(probe.predict(x), torch.from_numpy(ref.predict(xs)))


def test_optimum_satisfies_the_first_order_condition():
    """Direct computation: at the minimiser, the gradient of mean CE + l2 ||W||^2 is zero
    (the CE gradient for W is (softmax - onehot)^T xs / n; the penalty adds 2 l2 W)."""
    x, y = _toy(200, dims=4, shift=1.5, seed=3)
    l2 = 0.01
    probe = fit_linear_probe(x, y, 3, l2=l2, max_iter=500, tolerance_grad=1e-11,
                             tolerance_change=1e-15)
    xs = (x - x.mean(0)) / x.std(0)
    torch.testing.assert_close(probe.mean, x.mean(0))
    torch.testing.assert_close(probe.std, x.std(0))
    resid = (xs @ probe.weight.t() + probe.bias).softmax(1) - F.one_hot(y, 3).double()
    grad_w = resid.t() @ xs / len(y) + 2 * l2 * probe.weight
    grad_b = resid.mean(0)
    assert grad_w.abs().max() < 1e-8 and grad_b.abs().max() < 1e-8
    assert probe.weight.abs().max() > 0.1  # a real solution, not the zero start


def test_deterministic_and_no_state_between_fits():
    x, y = _toy(150, dims=8, shift=0.7, seed=5)
    a = fit_linear_probe(x, y, 3, l2=1e-3)
    fit_linear_probe(x[:50] * 3, y[:50], 3, l2=1e-1)  # another fit in between
    b = fit_linear_probe(x, y, 3, l2=1e-3)
    for name in ('weight', 'bias', 'mean', 'std'):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_bad_inputs_are_named():
    x, y = _toy(10)
    with pytest.raises(ValueError, match=r'labels must be integers in 0\.\.1, got torch.int64 '
                       r'in \[0, 2\]'):
        fit_linear_probe(x, y, 2)
    with pytest.raises(ValueError, match=r'x must be \[M, C\] and y \[M\] with M > 0, got x '
                       r'\[10, 5\] and y \[9\]'):
        fit_linear_probe(x, y[:9], 3)
    with pytest.raises(ValueError, match='l2 must be >= 0, got -1'):
        fit_linear_probe(x, y, 3, l2=-1)
