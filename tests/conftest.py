"""Shared fixtures: generated demo data.

Tools run in fresh Python processes (``_helpers.run_tool``) because registration and
default-scope state leak between tests that share one interpreter.
"""
import pytest
import torch
from _helpers import run_tool


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """A small copy of the demo datasets (same generator, fewer images)."""
    out = tmp_path_factory.mktemp('demo') / 'demo'
    run_tool(['tools/misc/make_demo_data.py', '--out', out, '--train-per-class', '8',
              '--val-per-class', '2', '--seg-train', '8', '--seg-val', '4'])
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
