"""State dicts: one unwrap rule, prefixes, and one checked load with one report.

* :func:`unwrap_state_dict` is the only place that finds the state dict inside a
  checkpoint: it descends through ``state_dict`` / ``model`` / ``module`` entries whose
  value is a dict (mmengine ``{'meta', 'state_dict', ...}``, unilm ``{'model', ...}``,
  DeepSpeed ``{'module'}``, nested ones too), then strips a ``module.`` (DDP) prefix that
  every key carries.
* :func:`take_prefix` keeps the keys under a prefix, without it.
* :func:`load_state_dict_checked` is the only place that compares a state dict with a
  model. It loads through torch's ``load_state_dict`` (so the models' own load hooks run:
  BEiTViT resizes tables there), notes every key that was missing, unexpected or of the
  wrong shape (a wrongly shaped entry is never copied), and raises
  :class:`CheckpointMismatchError` listing them unless the only missing keys are ones the
  caller allows to stay fresh. It returns a :class:`LoadReport`, whose :meth:`~LoadReport.table`
  is the one format in which mmbeit reports a load.
* Load hooks say what they changed with :func:`note_adapted` / :func:`note_dropped`;
  inside a checked load that goes into its report, elsewhere (a plain ``load_state_dict``)
  it is logged.

The policy (docs/checkpoints.md): loading a whole model (``tools/test.py``,
``tools/infer.py``, ``init_model``, ``load_from``, ``--resume``) allows nothing to be fresh;
initialising a part from a pretrained file allows only what the model declares (BEiTViT: its
trainable pooling norm, final norm and mask token) plus what the config names.
"""
import contextvars
import fnmatch
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple
from typing import Mapping as MappingT

import torch
import torch.nn as nn
from mmengine.logging import print_log

from .io import CheckpointError

__all__ = [
    'CheckpointMismatchError', 'LoadReport', 'unwrap_state_dict', 'take_prefix',
    'load_state_dict_checked', 'note_adapted', 'note_dropped', 'CONTAINER_KEYS',
    'format_keys'
]

#: Entries a checkpoint's state dict may sit under, tried in this order at every level.
CONTAINER_KEYS = ('state_dict', 'model', 'module')


class CheckpointMismatchError(CheckpointError):
    """A state dict that does not fit the model it is loaded into."""

    def __init__(self, message: str, report: Optional['LoadReport'] = None):
        super().__init__(message)
        self.report = report


def unwrap_state_dict(obj: Any) -> Tuple['OrderedDict[str, torch.Tensor]', List[str], str]:
    """Find the state dict inside a checkpoint (see the module docstring).

    Returns (state_dict, the container path taken, the stripped prefix). Raises
    :class:`CheckpointError` when what is found is not a dict of tensors.
    """
    containers: List[str] = []
    while isinstance(obj, MappingT):
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), MappingT)), None)
        if inner is None:
            break
        containers.append(inner)
        obj = obj[inner]
    if not isinstance(obj, MappingT):
        raise CheckpointError(f'expected a state dict or a checkpoint dict, got '
                              f'{type(obj).__name__}')
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        where = ''.join(f'[{c!r}]' for c in containers) or 'the top level'
        raise CheckpointError(
            f'not a state dict: entries {format_keys(bad)} are not tensors (looked in '
            f'{where}; containers tried: {list(CONTAINER_KEYS)})')
    state_dict = OrderedDict(obj)
    prefix = ''
    while state_dict and all(k.startswith('module.') for k in state_dict):
        prefix += 'module.'
        state_dict = OrderedDict((k[len('module.'):], v) for k, v in state_dict.items())
    return state_dict, containers, prefix


def take_prefix(state_dict: MappingT[str, torch.Tensor],
                prefix: str) -> 'OrderedDict[str, torch.Tensor]':
    """The entries whose key starts with ``prefix``, with the prefix removed."""
    return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                       if k.startswith(prefix))


def format_keys(keys: Sequence[str], shown: int = 6) -> str:
    """``[a, b, c, ... (N in all)]``: a few names and the count."""
    keys = list(keys)
    more = f', ... ({len(keys)} in all)' if len(keys) > shown else ''
    return '[' + ', '.join(map(str, keys[:shown])) + more + ']'


@dataclass
class LoadReport:
    """What one load did. ``source`` names the file (and prefix), ``target`` the model."""
    source: str
    target: str
    loaded: List[str] = field(default_factory=list)
    adapted: List[Tuple[str, str]] = field(default_factory=list)  # (keys, what was done)
    dropped: List[Tuple[str, str]] = field(default_factory=list)  # (keys, why)
    fresh: List[Tuple[str, str]] = field(default_factory=list)  # (key, why allowed)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> List[str]:
        out = []
        if self.missing:
            out.append(f'{len(self.missing)} missing (in the model, not in the file): '
                       f'{format_keys(self.missing)}')
        if self.unexpected:
            out.append(f'{len(self.unexpected)} unexpected (in the file, not in the model): '
                       f'{format_keys(self.unexpected)}')
        if self.mismatched:
            shown = [f'{k} {list(a)} in the file, {list(b)} in the model'
                     for k, a, b in self.mismatched]
            out.append(f'{len(shown)} of another shape: {format_keys(shown, 4)}')
        return out

    def table(self) -> str:
        """The report as aligned lines: one row per kind of outcome."""
        rows = [('loaded', f'{len(self.loaded)} tensors')]
        rows += [('adapted', f'{keys}: {what}') for keys, what in self.adapted]
        rows += [('dropped', f'{keys}: {why}') for keys, why in self.dropped]
        fresh: Dict[str, List[str]] = OrderedDict()
        for key, why in self.fresh:
            fresh.setdefault(why, []).append(key)
        rows += [('fresh', f'{format_keys(keys)}: {why}') for why, keys in fresh.items()]
        rows += [('PROBLEM', p) for p in self.problems()]
        width = max(len(r[0]) for r in rows)
        lines = [f'load {self.source} into {self.target}:']
        lines += [f'  {kind:<{width}}  {text}' for kind, text in rows]
        return '\n'.join(lines)


_ACTIVE: contextvars.ContextVar[Optional[LoadReport]] = contextvars.ContextVar(
    'mmbeit_active_load_report', default=None)


def _note(kind: str, keys: str, text: str) -> None:
    report = _ACTIVE.get()
    if report is not None:
        getattr(report, kind).append((keys, text))
    else:
        print_log(f'{kind} {keys}: {text}', logger='current')


def note_adapted(keys: str, what: str) -> None:
    """Record that the load path changed ``keys`` (resized, expanded, renamed, ...)."""
    _note('adapted', keys, what)


def note_dropped(keys: str, why: str) -> None:
    """Record that the load path left ``keys`` of the file out, and why."""
    _note('dropped', keys, why)


def _matches(key: str, pattern: str) -> bool:
    if any(c in pattern for c in '*?['):
        return fnmatch.fnmatchcase(key, pattern)
    return key == pattern or (pattern.endswith('.') and key.startswith(pattern))


def load_state_dict_checked(module: nn.Module, state_dict: MappingT[str, torch.Tensor], *,
                            source: str, fresh_ok: Optional[Dict[str, str]] = None,
                            target: Optional[str] = None, log: bool = True,
                            strict: bool = True, hint: str = '') -> LoadReport:
    """Load ``state_dict`` into ``module`` and check that it fits (module docstring).

    Args:
        module: the model (or part) to fill.
        state_dict: its weights; keys relative to ``module``. Not modified.
        source: what the weights are, for messages (the file, and the prefix taken).
        fresh_ok: keys the file may lack, each with the reason it may stay at its init:
            ``{'fc_norm.': 'trainable pooling norm'}``. A pattern is a key, a prefix
            ending in ``.``, or an fnmatch pattern. Default: none (a whole model).
        target: the model's name in messages (default: its class name).
        log: log :meth:`LoadReport.table` (rank-0 logger) after a successful load.
        strict: raise :class:`CheckpointMismatchError` on any problem (default). With
            ``strict=False`` the problems are only reported: for tools that inspect a file.
        hint: what the caller's user can do about a mismatch; the error's last line.

    Returns:
        LoadReport. If ``strict`` and something does not fit, the error is raised after
        torch's load ran: the module then holds the entries that did fit and must not be
        used (the error stops the run that asked for it).
    """
    fresh_ok = dict(fresh_ok or {})
    report = LoadReport(source=source, target=target or type(module).__name__)
    mismatched: Dict[str, Tuple[tuple, tuple]] = OrderedDict()

    def check_shapes(mod, sd, prefix, *args):
        # Runs inside torch's per-module load, after the module's own hooks adapted ``sd``.
        own = dict(mod._parameters)
        own.update((k, v) for k, v in mod._buffers.items()
                   if k not in mod._non_persistent_buffers_set)
        for name, value in own.items():
            key = prefix + name
            if value is None or key not in sd or not isinstance(sd[key], torch.Tensor):
                continue
            if tuple(sd[key].shape) != tuple(value.shape):
                mismatched[key] = (tuple(sd[key].shape), tuple(value.shape))
                del sd[key]  # never copied; reported below instead of torch's error

    handles = [m.register_load_state_dict_pre_hook(check_shapes) for m in module.modules()]
    token = _ACTIVE.set(report)
    try:
        result = module.load_state_dict(OrderedDict(state_dict), strict=False)
    finally:
        _ACTIVE.reset(token)
        for h in handles:
            h.remove()
    report.mismatched = [(k, a, b) for k, (a, b) in mismatched.items()]
    missing = [k for k in result.missing_keys if k not in mismatched]
    for key in missing:
        why = next((r for p, r in fresh_ok.items() if _matches(key, p)), None)
        if why is None:
            report.missing.append(key)
        else:
            report.fresh.append((key, why))
    report.unexpected = list(result.unexpected_keys)
    not_loaded = set(report.missing) | set(mismatched) | {k for k, _ in report.fresh}
    report.loaded = [k for k in module.state_dict() if k not in not_loaded]
    if strict and not report.ok:
        raise CheckpointMismatchError(
            f'{source} does not fit {report.target}:\n  ' + '\n  '.join(report.problems())
            + (f'\n{hint}' if hint else ''), report)
    if log:
        print_log(report.table(), logger='current')
    return report
