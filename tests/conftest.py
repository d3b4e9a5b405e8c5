"""Shared fixtures (generated demo data, one torch thread) and the ``slow`` marker.

Tools run in fresh Python processes (``_helpers.run_tool``) because registration and
default-scope state leak between tests that share one interpreter.

Tests marked ``@pytest.mark.slow`` (more than about 10 s here: whole tool runs, base and
large models) are deselected by a plain ``python -m pytest tests``, for quick local runs.
``--run-slow`` keeps them, and so does an explicit ``-m`` expression (``-m slow`` runs
only them); ``tools/run_tests.sh``, what CI runs, passes ``--run-slow``.

``mmbeit.registry`` is imported first, as every mmbeit tool does: it switches off
mmpretrain's multimodal models, which cannot import under transformers 5 and would break
a test that imports mmpretrain / mmseg / mmdet models directly (its note says why).
"""
import pytest
import torch
from _helpers import run_tool

import mmbeit.registry  # noqa: F401  (first; see above)


def pytest_addoption(parser):
    parser.addoption('--run-slow', action='store_true', default=False,
                     help='also run the tests marked slow (tools/run_tests.sh and CI do)')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--run-slow') or config.getoption('markexpr'):
        return
    slow = [item for item in items if item.get_closest_marker('slow')]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker('slow')]


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """A small copy of the demo datasets (same generator, fewer images)."""
    out = tmp_path_factory.mktemp('demo') / 'demo'
    run_tool(['tools/misc/make_demo_data.py', '--out', out, '--train-per-class', '8',
              '--val-per-class', '2', '--seg-train', '8', '--seg-val', '4',
              '--coco-train', '8', '--coco-val', '4'])
    return out


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op torch thread for a test module (``pytestmark =
    pytest.mark.usefixtures('one_thread')``): tiny models run faster single-threaded,
    and the machine is often shared. The previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
