"""mmbeit's to_2tuple gives two Python ints or refuses the value; it is kept instead of
mmengine.utils.to_2tuple, which passes any iterable through unchanged."""
import numpy as np
import pytest
import torch
from mmengine.utils import to_2tuple as mmengine_to_2tuple

from mmbeit.models.utils import to_2tuple


@pytest.mark.parametrize('value, pair', [
    (7, (7, 7)), ((7, 8), (7, 8)), ([7, 8], (7, 8)), (torch.Size([7, 8]), (7, 8)),
    (np.int64(7), (7, 7)), ((np.int32(7), 8), (7, 8)),
])
def test_ints_and_pairs_of_ints_become_a_tuple_of_two_python_ints(value, pair):
    out = to_2tuple(value)
    assert out == pair and type(out) is tuple and all(type(v) is int for v in out)


@pytest.mark.parametrize('value', ['12', 7.0, (7.5, 8), (7,), (1, 2, 3), True, (True, 2),
                                   None])
def test_anything_else_is_refused_with_the_value(value):
    with pytest.raises(ValueError) as exc:
        to_2tuple(value)
    assert str(exc.value) == f'expected an int or a pair of ints (h, w), got {value!r}'


def test_mmengine_to_2tuple_differs_where_ours_refuses_or_converts():
    # why mmbeit keeps its own: mmengine's returns iterables as they are
    assert mmengine_to_2tuple([7, 8]) == [7, 8]
    assert mmengine_to_2tuple((1, 2, 3)) == (1, 2, 3)
    assert mmengine_to_2tuple('12') == '12'
    assert mmengine_to_2tuple(7) == to_2tuple(7)
