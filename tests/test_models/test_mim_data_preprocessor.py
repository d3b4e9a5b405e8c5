"""MIMDataPreprocessor's device copy honours ``non_blocking`` (it was once hard-wired to
True for the views and False for the mask), and its numeric arguments are checked."""
import pytest
import torch

from mmbeit.models.data_preprocessors import MIMDataPreprocessor


def _batch(b=2, size=16, patch=8):
    n = (size // patch) ** 2
    views = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8)
    target = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[:, :2] = True
    return dict(inputs=[views, target, mask], data_samples=None)


@pytest.mark.parametrize('non_blocking', [False, True])
@pytest.mark.parametrize('stacked', [True, False])
def test_every_copy_to_the_device_uses_non_blocking(non_blocking, stacked, monkeypatch):
    pre = MIMDataPreprocessor(patch_size=8, non_blocking=non_blocking)
    data = _batch()
    if not stacked:   # pseudo_collate: sequences of per-sample tensors
        data['inputs'] = [list(x) for x in data['inputs']]
    calls = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append((tuple(self.shape), self.dtype, args, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, 'to', spy)
    out = pre(data, training=True)
    monkeypatch.undo()
    moved = [(shape, dtype) for shape, dtype, args, _ in calls if args == (pre.device,)]
    assert moved == [((2, 3, 16, 16), torch.uint8), ((2, 3, 16, 16), torch.uint8),
                     ((2, 4), torch.bool)]
    assert [kw for *_, args, kw in calls if args == (pre.device,)] == [
        dict(non_blocking=non_blocking)] * 3
    assert out['num_masked'] == 2 and out['mask'].dtype == torch.bool


def test_default_is_non_blocking():
    assert MIMDataPreprocessor()._non_blocking is True


@pytest.mark.parametrize('kwargs, message', [
    (dict(patch_size=0), 'patch_size must be a positive int, got 0'),
    (dict(patch_size=8.0), 'patch_size must be a positive int, got 8.0'),
    (dict(std=(58.4, 0.0, 57.4)), r'std must be 3 positive finite numbers'),
    (dict(mean=(1.0, 2.0)), r'mean must be 3 finite numbers'),
    (dict(non_blocking='yes'), "non_blocking must be True or False, got 'yes'"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=f'^MIMDataPreprocessor: {message}'):
        MIMDataPreprocessor(**kwargs)
