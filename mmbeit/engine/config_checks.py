"""Checks of a user's config input that name the bad entry and the fix.

* :class:`CfgOptionsAction`: the ``--cfg-options`` action of every tool. mmengine's
  ``DictAction`` unpacks ``KEY=VALUE`` without looking, so ``--cfg-options
  model.backbone.arch`` fails with Python's "not enough values to unpack" and an
  unbalanced bracket with a bare assertion. Here each item is checked first and a bad
  one is an argparse error (exit status 2) that quotes the item and shows the form.
* :func:`check_model_config`: a misspelt key of the model config otherwise surfaces as a
  bare ``TypeError: __init__() got an unexpected keyword argument`` from deep inside the
  registry, without the config path. This walks the model config before anything is
  built and names the path, the class and the closest valid argument names.
"""
import difflib
import inspect
from typing import List, Optional, Tuple

from mmengine.config import DictAction

__all__ = ['CfgOptionsAction', 'check_model_config', 'UnknownConfigKeyError',
           'NOT_MODEL_KEYS']

_CFG_OPTIONS_EXAMPLE = 'model.backbone.drop_path_rate=0.2'


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` (``KEY=VALUE`` items merged into one dict, values parsed
    as int / float / bool / None / lists / tuples) with each item checked first: a
    missing ``=``, an empty key or key part (``model..arch``) and unbalanced brackets
    are reported through ``parser.error`` with the item and the expected form."""

    def __call__(self, parser, namespace, values, option_string=None):
        flag = option_string or '--cfg-options'
        for item in values or ():
            problem = self._problem(item)
            if problem:
                parser.error(f'{flag}: {item!r} {problem}. Each item is KEY=VALUE, e.g. '
                             f'{_CFG_OPTIONS_EXAMPLE}; quote a value that holds spaces '
                             f'("key=[1, 2]"), or the shell splits it into two items')
        super().__call__(parser, namespace, values, option_string)

    @staticmethod
    def _problem(item: str) -> Optional[str]:
        if '=' not in item:
            return f'has no "=": write {item}=VALUE'
        key, value = item.split('=', 1)
        if not key or any(not part for part in key.split('.')):
            return f'has an empty key or key part ({key!r})'
        for open_, close in ('()', '[]'):
            if value.count(open_) != value.count(close):
                return f'has unbalanced {open_!r} / {close!r} brackets in its value'
        return None


class UnknownConfigKeyError(TypeError):
    """A model config entry that its class does not take (a TypeError, as building it
    would raise, but naming the config path, the class and the closest names)."""


#: Keys whose sub-configs are not built by ``MODELS.build(cfg)`` with their keys as
#: arguments, so their keys are not compared with a class signature:
#: ``init_cfg`` describes weight initialisers (mmengine's WEIGHT_INITIALIZERS);
#: ``norm_cfg`` / ``act_cfg`` / ``conv_cfg`` / ``pad_cfg`` / ``upsample_cfg`` go through
#: mmcv's ``build_*_layer``, which takes keys of its own (``requires_grad``, ``layer``)
#: out before building the layer.
NOT_MODEL_KEYS = frozenset(
    ('init_cfg', 'norm_cfg', 'act_cfg', 'conv_cfg', 'pad_cfg', 'upsample_cfg'))


def _accepted_names(obj) -> Optional[List[str]]:
    """The keyword arguments ``obj(**kwargs)`` takes, or None when they cannot be told
    (``**kwargs``, no signature)."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _qualname(obj) -> str:
    return f'{getattr(obj, "__name__", obj)} ({getattr(obj, "__module__", "?")})'


def _unknown_key_line(path: str, key: str, obj, accepted: List[str]) -> str:
    close = difflib.get_close_matches(key, accepted, n=2, cutoff=0.75)
    if close:
        hint = 'did you mean ' + ' or '.join(repr(c) for c in close) + '?'
    else:
        hint = 'it takes ' + ', '.join(accepted) if accepted else 'it takes no arguments'
    return f'  {path}.{key}: {_qualname(obj)} has no argument {key!r}; {hint}'


def check_model_config(cfg_model: dict, registry=None, scope: Optional[str] = 'mmbeit',
                       path: str = 'model') -> List[Tuple[str, str]]:
    """Compare every model sub-config's keys with the ``__init__`` of its class.

    Every dict under ``cfg_model`` (``cfg_model`` included) whose ``type`` resolves in
    ``registry`` is checked: each key other than ``type`` and ``_scope_`` must be an
    argument of that class (or function). Classes taking ``**kwargs`` are not checked
    (their valid keys cannot be told), nor are types the registry does not know (the
    build reports those itself). Types resolve as mmengine's build does: in ``scope``,
    or in the scope a ``_scope_`` key switches to for its sub-tree; a prefixed type
    (``'mmbeit.BEiTViT'`` inside an mmseg model) resolves in its own scope, while its
    sub-configs stay in the current one (mmengine does not switch the default scope for
    a prefix). Sub-configs are walked whether or not their parent resolved (e.g.
    ``VQKD.teacher``); those under the keys in :data:`NOT_MODEL_KEYS` (``init_cfg``,
    mmcv layer configs) are not.

    Args:
        cfg_model (dict): the model config (``cfg.model``).
        registry (Registry, optional): the MODELS registry to resolve types in.
            Defaults to ``mmbeit.registry.MODELS``.
        scope (str, optional): the config's ``default_scope``. Defaults to 'mmbeit'.
        path (str): the name of ``cfg_model`` in messages. Defaults to 'model'.

    Returns:
        list[tuple[str, str]]: ``(config path, class name)`` of every entry checked.

    Raises:
        UnknownConfigKeyError: listing every unknown key as ``path.key``, its class and
            the closest valid names (``difflib``), or all of them when none is close.
    """
    if registry is None:
        from mmbeit.registry import MODELS as registry
    checked: List[Tuple[str, str]] = []
    problems: List[str] = []

    def resolve(type_, reg):
        if not isinstance(type_, str):
            return type_ if callable(type_) else None
        try:
            return reg.get(type_)
        except Exception:  # noqa: BLE001 - an unknown type is the build's error to report
            return None

    def walk(node, where: str, reg) -> None:
        if isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                walk(item, f'{where}[{i}]', reg)
            return
        if not isinstance(node, dict):
            return
        sub_scope = node.get('_scope_')
        if isinstance(sub_scope, str):
            with reg.switch_scope_and_registry(sub_scope) as scoped:
                walk_dict(node, where, scoped)
        else:
            walk_dict(node, where, reg)

    def walk_dict(node: dict, where: str, reg) -> None:
        type_ = node.get('type')
        obj = resolve(type_, reg) if type_ is not None else None
        accepted = _accepted_names(obj) if obj is not None else None
        if accepted is not None:
            checked.append((where, getattr(obj, '__name__', str(obj))))
            for key in node:
                if key not in ('type', '_scope_') and key not in accepted:
                    problems.append(_unknown_key_line(where, str(key), obj, accepted))
        for key, value in node.items():
            if key in NOT_MODEL_KEYS or key in ('type', '_scope_'):
                continue
            walk(value, f'{where}.{key}', reg)

    with registry.switch_scope_and_registry(scope) as reg:
        walk(cfg_model, path, reg)
    if problems:
        raise UnknownConfigKeyError(
            'the model config has keys that its classes do not take (a misspelling, or a '
            'key meant for another entry):\n' + '\n'.join(problems))
    return checked
