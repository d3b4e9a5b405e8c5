"""Checks of numeric constructor arguments, so that a bad config value is refused when
the model is built, naming the class, the argument and the valid range, instead of
failing later in a kernel (``bernoulli_`` for a negative drop-path rate) or training
silently on nonsense (a negative loss weight, a negative layer-scale value that turns
layer scale off)."""
import math
from numbers import Integral, Real
from typing import Optional, Tuple

__all__ = ['check_int', 'check_number', 'check_rgb']


def check_int(value, name: str, owner: str, low: int = 1, high: Optional[int] = None) -> int:
    """``value`` as an int in ``[low, high]`` (``high`` None: no upper bound); bools and
    floats are refused. Raises ValueError ``'<owner>: <name> must be ...'``."""
    if (isinstance(value, Integral) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high)):
        return int(value)
    bound = f'an int >= {low}' if high is None else f'an int in [{low}, {high}]'
    raise ValueError(f'{owner}: {name} must be {bound}, got {value!r}')


def check_number(value, name: str, owner: str, low: Optional[float] = None,
                 high: Optional[float] = None, low_open: bool = False,
                 high_open: bool = False) -> float:
    """``value`` as a finite float within the bounds (``low_open`` / ``high_open``
    exclude the bound itself; None: unbounded); bools, NaN and infinities are refused.
    Raises ValueError ``'<owner>: <name> must be ...'``."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return float(value)
    if low is not None and high is not None:
        bound = f'in {"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
    elif low is not None:
        bound = f'{">" if low_open else ">="} {low}'
    elif high is not None:
        bound = f'{"<" if high_open else "<="} {high}'
    else:
        bound = 'a finite number'
    if low is not None or high is not None:
        bound = f'a finite number {bound}'
    raise ValueError(f'{owner}: {name} must be {bound}, got {value!r}')


def check_rgb(values, name: str, owner: str, positive: bool = False
              ) -> Tuple[float, float, float]:
    """``values`` (a list / tuple of 3 finite numbers, one per channel in R, G, B order and
    0-255 units: a mean or std) as 3 floats; ``positive`` refuses values <= 0 (a std).
    Raises ValueError ``'<owner>: <name> must be 3 ...'``."""
    ok = (isinstance(values, (tuple, list)) and len(values) == 3
          and all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
                  and (v > 0 or not positive) for v in values))
    if not ok:
        what = 'positive finite numbers' if positive else 'finite numbers'
        raise ValueError(f'{owner}: {name} must be 3 {what} (R, G, B in 0-255 units), got '
                         f'{values!r}')
    return tuple(float(v) for v in values)
