"""Every reference to a file in the repository's code, configs and docs leads somewhere.

A maintainer must be able to follow what a docstring or a config comment cites. This
module scans every text file of the working tree (``.py``, ``.md``, ``.sh``, ``.txt``,
``.cfg``, ``.toml``, ``.ci/run`` and ``NOTICE``; the files git tracks plus new ones it
does not ignore) and reports, with file and line:

1. repository paths (``docs/method.md``, ``tools/misc/make_demo_data.py``,
   ``configs/beit/``, ``mmbeit/models/...``: a path whose first component is a top-level
   folder of the repository) that name no file or folder of the repository. ``*`` and
   ``{a,b}`` are read as patterns (at least one match), ``{name}`` as a placeholder;
2. relative paths, resolved from the citing file's folder, that do not exist or leave the
   repository: every ``../x``, and ``./x`` in configs and Markdown links (elsewhere ``./x``
   is mostly a command's argument, relative to where the command runs);
3. paths into other checkouts or machines (``/work/...``, ``/home/...``, ``../shared``,
   the external spec document) wherever they appear;
4. bare file names (``layout.py``) in prose, i.e. Markdown, Python comments and
   docstrings, shell comments, that are no file of the repository and not one of the
   upstream files listed in ``UPSTREAM_FILES`` (cite those with their project, e.g.
   "unilm beit2/modeling_pretrain.py").

Papers and URLs are references too and are not checked here (no network in tests).
``data/`` and ``work_dirs/`` are where users put datasets and runs, not repository files.
This file is not scanned: its own examples are dangling on purpose.
"""
import ast
import bisect
import fnmatch
import io
import itertools
import os
import os.path as osp
import re
import subprocess
import tokenize
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SELF = 'tests/test_references.py'
SCANNED_SUFFIXES = ('.py', '.md', '.sh', '.txt', '.cfg', '.toml')
SCANNED_NAMES = ('.ci/run', 'NOTICE')
#: top-level folders that hold user data and runs, never repository files
RUNTIME_DIRS = ('data', 'work_dirs')
#: extensions of a bare file name that rule 4 checks (source files; a bare ``x.md`` or
#: ``x.json`` in prose is mostly an output a tool writes)
BARE_EXTS = ('py', 'sh')

#: Files of other projects that prose names without a folder. Each is cited next to its
#: project ("unilm's optim_factory.py"); add a name here only with that project.
UPSTREAM_FILES = {
    # microsoft/unilm beit/ and beit2/
    'modeling_finetune.py', 'modeling_pretrain.py', 'modeling_vqkd.py',
    'modeling_discrete_vae.py', 'norm_ema_quantizer.py', 'masking_generator.py',
    'run_class_finetuning.py', 'run_linear_eval.py', 'run_beit_pretraining.py',
    'run_beitv2_pretraining.py', 'run_vqkd_training.py', 'engine_for_pretraining.py',
    'optim_factory.py', 'datasets.py', 'transforms.py',
    # huggingface/transformers models/beit/, open-mmlab/mmsegmentation tools, timm
    'convert_beit_unilm_to_pytorch.py', 'modeling_beit.py', 'beit2mmseg.py', 'beit.py',
    # facebookresearch/dino (the weighted kNN of the kNN monitor)
    'eval_knn.py',
    # open-mmlab/mmpretrain configs/beitv2/
    'beitv2_beit-base-p16_8xb256-amp-coslr-300e_in1k.py',
    # facebookresearch/detectron2 projects/ViTDet (configs/COCO/, configs/common/,
    # modeling/backbone/): the ViTDet recipe of the detection configs
    'mask_rcnn_vitdet_b_100ep.py', 'mask_rcnn_vitdet_l_100ep.py', 'coco_loader_lsj.py',
    'vit.py',
}

#: Paths that tests name on purpose because they do not exist (the bad input of a test).
INTENTIONALLY_MISSING = {
    'configs/nope.py',  # tests/test_tools/test_train_test_tools.py: a config that is not there
}

_TOKEN = r'[\w.*{},+@-]'
_PLACEHOLDER_PREFIX = re.compile(r'(?:\$\{?\w+\}?|\{\w+\})/$')
_RELATIVE = re.compile(r'(?<![\w./$}-])(\.\.?/' + _TOKEN + r'*(?:/' + _TOKEN + r'*)*)')
_MD_LINK_TARGET = re.compile(r'\]\($')
_OUTSIDE = re.compile(
    r'(?<![\w.-])(?:/(?:work|home|root|Users)/\S*|\.\./shared\b\S*)|\bbeit-spec(?:\.md)?\b')
_BARE = re.compile(r'(?<![\w./*{},-])([\w*-]+\.(?:' + '|'.join(BARE_EXTS) + r'))(?![\w/*{}-])')


def repository_files(root: str = ROOT) -> List[str]:
    """Files of the working tree, relative to ``root``: tracked ones plus new ones git does
    not ignore (a clone has only the first kind), without deleted ones."""
    try:
        out = subprocess.run(
            ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
            cwd=root, capture_output=True, check=True).stdout.decode()
        names = [n for n in out.split('\0') if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk it
        names = []
        for base, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in ('.git', '__pycache__') + RUNTIME_DIRS]
            names += [osp.relpath(osp.join(base, f), root) for f in files]
    return sorted({n for n in names if osp.isfile(osp.join(root, n))})


class Repository:
    """The set of files (and the folders above them) references may point at."""

    def __init__(self, files: Iterable[str]):
        self.files: Set[str] = set(files)
        self.dirs: Set[str] = {osp.dirname(f) for f in self.files}
        for d in list(self.dirs):
            while d:
                d = osp.dirname(d)
                self.dirs.add(d)
        self.dirs.discard('')
        self.basenames: Set[str] = {osp.basename(f) for f in self.files}
        self.top_dirs = sorted({f.split('/', 1)[0] for f in self.files if '/' in f}
                               - set(RUNTIME_DIRS))
        tops = '|'.join(re.escape(t) for t in self.top_dirs) or r'(?!)'
        self.repo_path = re.compile(r'((?:' + tops + r')/' + _TOKEN + r'*(?:/' + _TOKEN
                                     + r'*)*)')

    def exists(self, path: str) -> bool:
        """``path`` (relative to the root; may end with '/') names a file or folder of the
        repository. ``{a,b}``: every alternative must exist; ``*`` and a ``{name}``
        placeholder: at least one match."""
        return all(self._exists_one(p) for p in _expand_braces(path))

    def _exists_one(self, path: str) -> bool:
        want_dir = path.endswith('/')
        path = path.rstrip('/')
        if any(ch in path for ch in '*?['):
            pool = self.dirs if want_dir else self.files | self.dirs
            return any(fnmatch.fnmatchcase(p, path) for p in pool)
        return path in self.dirs or (not want_dir and path in self.files)


def _expand_braces(path: str) -> List[str]:
    """``a/{b,c}.py`` -> [``a/b.py``, ``a/c.py``]; ``{name}`` (no comma) -> ``*``."""
    parts = re.split(r'(\{[^{}]*\})', path)
    options = []
    for part in parts:
        if part.startswith('{') and part.endswith('}'):
            inner = part[1:-1]
            options.append(inner.split(',') if ',' in inner else ['*'])
        else:
            options.append([part])
    return [''.join(combo) for combo in itertools.product(*options)]


def _clean(token: str) -> str:
    """Strip sentence punctuation and unbalanced braces from the end of a matched path."""
    token = token.rstrip('.,;:')
    while token.count('{') < token.count('}') and token.endswith('}'):
        token = token[:-1].rstrip('.,;:')
    return token


def prose_lines(path: str, text: str) -> Optional[Set[int]]:
    """Line numbers (1-based) of prose in ``text``: every line of Markdown and text files,
    comments and docstrings of Python, comments of shell scripts. None means all lines."""
    if not path.endswith('.py'):
        if path.endswith('.sh') or path in SCANNED_NAMES:
            return {i for i, line in enumerate(text.splitlines(), 1)
                    if line.lstrip().startswith('#')}
        return None
    lines: Set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                lines.add(tok.start[0])
        tree = ast.parse(text)
    except (SyntaxError, tokenize.TokenError):
        return None
    # docstrings: the first statement of a module, class or function, if a string; only
    # statements are visited (defs can sit in if / try / with bodies), not expressions
    todo = [tree]
    while todo:
        node = todo.pop()
        first = (getattr(node, 'body', None) or [None])[0]
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            lines.update(range(first.lineno, first.end_lineno + 1))
        for field in ('body', 'orelse', 'finalbody', 'handlers'):
            children = getattr(node, field, None)
            if isinstance(children, list):
                todo += [c for c in children if isinstance(c, ast.AST)]
    return lines


def check_text(path: str, text: str, repo: Repository) -> List[str]:
    """Problems of one file as ``'path:line: reference (why)'`` strings, in line order."""
    found = []  # (line, problem)
    folder = osp.dirname(path)
    line_starts = [0] + [m.end() for m in re.finditer('\n', text)]

    def locate(pos: int) -> Tuple[int, str]:
        """(1-based line of ``pos``, the text of that line before ``pos``)."""
        lineno = bisect.bisect_right(line_starts, pos)
        return lineno, text[line_starts[lineno - 1]:pos]

    outside = []
    for m in _OUTSIDE.finditer(text):
        outside.append(m.span())
        found.append((locate(m.start())[0], f'{m.group(0)!r} (points outside the repository)'))
    for m in repo.repo_path.finditer(text):
        lineno, before = locate(m.start())
        if before and re.match(r'[\w./-]', before[-1]) and not _PLACEHOLDER_PREFIX.search(
                before):
            continue  # inside another path (unilm beit/semantic_segmentation/configs/...)
        ref = _clean(m.group(1))
        if ref not in INTENTIONALLY_MISSING and not repo.exists(ref):
            found.append((lineno, f'{ref!r} (no such file or folder in the repository)'))
    for m in _RELATIVE.finditer(text):
        if any(a <= m.start() < b for a, b in outside):
            continue  # reported above
        lineno, before = locate(m.start())
        ref = _clean(m.group(1))
        if ref.startswith('./') and not (path.startswith('configs/')
                                         or _MD_LINK_TARGET.search(before)):
            continue  # a command's argument, relative to where it runs, not to this file
        target = osp.normpath(osp.join(folder, ref))
        if target == '..' or target.startswith('../'):
            found.append((lineno, f'{ref!r} (leaves the repository)'))
        elif not repo.exists(target + ('/' if ref.endswith('/') else '')):
            found.append((lineno, f'{ref!r} (resolves to {target!r}, which is not in the '
                                  'repository)'))
    bare = [m for m in _BARE.finditer(text) if m.group(1) not in UPSTREAM_FILES
            and m.group(1) not in repo.basenames
            and ('*' not in m.group(1) or not fnmatch.filter(repo.basenames, m.group(1)))]
    if bare:  # where prose is: parsed only when needed (tokenize and ast are slow)
        prose = prose_lines(path, text)
        for m in bare:
            lineno = locate(m.start())[0]
            if prose is None or lineno in prose:
                found.append((lineno, f'{m.group(1)!r} (no file of that name in the '
                                      'repository; give its path, or its project if it is '
                                      'not ours)'))
    return [f'{path}:{lineno}: {problem}' for lineno, problem in sorted(found)]


def scanned(files: Iterable[str]) -> List[str]:
    return [f for f in files
            if (f.endswith(SCANNED_SUFFIXES) or f in SCANNED_NAMES) and f != SELF
            and f.split('/', 1)[0] not in RUNTIME_DIRS]


def find_dangling(texts: Dict[str, str], repo: Repository) -> List[str]:
    problems = []
    for path, text in texts.items():
        problems += check_text(path, text, repo)
    return problems


def test_no_dangling_references():
    files = repository_files()
    repo = Repository(files)
    texts = {}
    for f in scanned(files):
        with open(osp.join(ROOT, f), encoding='utf-8', errors='replace') as fh:
            texts[f] = fh.read()
    assert len(texts) > 50, f'only {len(texts)} files found under {ROOT}'
    problems = find_dangling(texts, repo)
    assert not problems, (f'{len(problems)} references lead nowhere:\n  '
                          + '\n  '.join(problems))


# ---------------------------------------------------------------------- the checker itself
FAKE_REPO = Repository([
    'README.md', 'docs/method.md', 'docs/contracts.md', 'configs/_base_/default_runtime.py',
    'configs/beit/beit_vit-base_800e.py', 'configs/beit/README.md', 'mmbeit/registry.py',
    'tools/train.py', '.ci/run', SELF,
])


@pytest.mark.parametrize('path, text, expected', [
    ('docs/x.md', 'see docs/nope.md for more', "'docs/nope.md' (no such file"),
    ('mmbeit/a.py', '"""Keys as in tools/model_converters/gone.py."""\n', "'tools/model_conv"),
    ('mmbeit/a.py', 'x = 1  # layout of layout.py\n', "'layout.py' (no file of that name"),
    ('tests/t.py', '"""Tested in test_transfer.py."""\n', "'test_transfer.py' (no file"),
    ('configs/beit/x.py', "_base_ = ['../_base_/nothing.py']\n", "'configs/_base_/nothing.py'"),
    ('configs/beit/README.md', 'see [x](../../docs/none.md)', "'docs/none.md'"),
    ('docs/x.md', 'spec in ../shared/docs/beit-spec.md', 'points outside the repository'),
    ('docs/x.md', 'read /work/shared/x', 'points outside the repository'),
    ('docs/x.md', 'as [a](../../README.md) says', 'leaves the repository'),
    ('docs/x.md', 'configs/{beit,vqkd}/README.md', "'configs/{beit,vqkd}/README.md'"),
    ('docs/x.md', 'any of configs/*/nothing_*.py', "'configs/*/nothing_*.py'"),
])
def test_checker_flags_dangling_reference(path, text, expected):
    problems = check_text(path, text, FAKE_REPO)
    assert len(problems) == 1 and expected in problems[0], problems
    assert problems[0].startswith(f'{path}:1: '), problems


@pytest.mark.parametrize('path, text', [
    ('docs/x.md', 'see docs/method.md, [contracts](contracts.md) and configs/beit/.'),
    ('docs/x.md', 'configs/{beit,_base_}/ and configs/*/README.md and docs/{name}.md'),
    ('configs/beit/x.py', "_base_ = ['../_base_/default_runtime.py', './beit_vit-base_800e.py']"),
    ('configs/beit/README.md', 'see [method](../../docs/method.md)'),
    ('tools/x.sh', 'python "$ROOT/tools/train.py" "$@"'),
    ('tests/t.py', "run(f'{ROOT}/tools/train.py')\n"),
    ('mmbeit/a.py', '"""As unilm beit2/modeling_pretrain.py and optim_factory.py do."""\n'),
    ('mmbeit/a.py', "x = 'layout.py'\n"),  # a name in code, not in prose
    ('docs/x.md', 'put ImageNet under data/imagenet/meta/train.txt; runs in work_dirs/x/'),
    ('docs/x.md', 'timm/models/beit.py and unilm beit/semantic_segmentation/configs/x.py'),
    ('docs/x.md', 'the registry (mmbeit/registry.py). README.md, .ci/run'),
    ('tests/t.py', "cfg = 'configs/nope.py'  # missing on purpose\n"),
])
def test_checker_accepts_good_reference(path, text):
    assert check_text(path, text, FAKE_REPO) == []
