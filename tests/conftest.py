"""Shared fixtures: generated demo data.

Tools run in fresh Python processes (``_helpers.run_tool``) because registration and
default-scope state leak between tests that share one interpreter.
"""
import pytest
from _helpers import run_tool


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """A small copy of the demo datasets (same generator, fewer images)."""
    out = tmp_path_factory.mktemp('demo') / 'demo'
    run_tool(['tools/misc/make_demo_data.py', '--out', out, '--train-per-class', '8',
              '--val-per-class', '2', '--seg-train', '8', '--seg-val', '4'])
    return out
