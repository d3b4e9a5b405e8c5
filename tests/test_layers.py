"""mmbeit's packages import downwards only (docs/architecture.md).

Every ``import`` / ``from ... import`` in mmbeit/ (at module level or inside a function) is
resolved to the mmbeit package it reaches; a package may import its own modules and those
of a lower layer, never a higher one or one beside it.
"""
import ast
import os
import os.path as osp

from _helpers import ROOT

PKG = osp.join(ROOT, 'mmbeit')

#: Layer of each top-level part of mmbeit, lowest first (docs/architecture.md).
LAYERS = {
    'version': 0, 'registry': 0,
    'checkpoint': 1,
    'datasets': 2, 'converters': 2,
    'models': 3, 'evaluation': 3,
    'engine': 4, 'visualization': 4,
    'apis': 5,
}


def _part(relpath: str) -> str:
    """'models/backbones/beit_vit.py' -> 'models'; '__init__.py' -> '' (the package)."""
    first = relpath.split(os.sep)[0]
    return '' if first == '__init__.py' else first.removesuffix('.py')


def _targets(path: str, relpath: str):
    """(line, mmbeit part) for each import of an mmbeit module in the file."""
    tree = ast.parse(open(path).read(), path)
    here = ['mmbeit'] + relpath.removesuffix('.py').split(os.sep)
    if here[-1] == '__init__':
        here = here[:-1]
    else:
        here = here[:-1]  # the package holding the module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                mod = '.'.join(base + ([node.module] if node.module else []))
                names = [mod] if node.module else [f'{mod}.{a.name}' for a in node.names]
            else:
                names = [node.module or '']
        else:
            continue
        for name in names:
            parts = name.split('.')
            if parts[0] == 'mmbeit' and len(parts) > 1:
                yield node.lineno, parts[1]


def upward_imports(pkg=PKG):
    found = []
    for folder, _, files in os.walk(pkg):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = osp.join(folder, name)
            rel = osp.relpath(path, pkg)
            src = _part(rel)
            if src == '':
                continue  # mmbeit/__init__.py: checked by its own test
            for line, dst in _targets(path, rel):
                if dst == src:
                    continue
                if dst not in LAYERS or src not in LAYERS:
                    found.append(f'mmbeit/{rel}:{line}: {src} -> {dst} (part not in LAYERS)')
                elif LAYERS[dst] >= LAYERS[src]:
                    found.append(f'mmbeit/{rel}:{line}: {src} (layer {LAYERS[src]}) imports '
                                 f'{dst} (layer {LAYERS[dst]})')
    return found


def test_every_part_of_mmbeit_has_a_layer():
    parts = {_part(n) for n in os.listdir(PKG)
             if n.endswith('.py') or osp.isdir(osp.join(PKG, n, ''))
             and osp.exists(osp.join(PKG, n, '__init__.py'))}
    assert parts - {''} == set(LAYERS)


def test_imports_go_downwards_only():
    assert upward_imports() == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk must resolve relative and absolute imports (else the test above is empty)."""
    models = tmp_path / 'models' / 'tokenizers'
    models.mkdir(parents=True)
    (tmp_path / '__init__.py').write_text('from .version import __version__\n')
    (models / 'x.py').write_text('from mmbeit.engine import runner\n'
                                 'def f():\n    from ...apis import init_model\n'
                                 'from ..backbones import y\nfrom mmbeit.checkpoint import z\n')
    assert [f.split(': ', 1)[1] for f in upward_imports(str(tmp_path))] == [
        'models (layer 3) imports engine (layer 4)', 'models (layer 3) imports apis (layer 5)']


def test_importing_mmbeit_imports_only_its_version():
    tree = ast.parse(open(osp.join(PKG, '__init__.py')).read())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [(n.level, n.module) for n in imports] == [(1, 'version')]
