"""Helpers shared by the tests (on pytest's pythonpath, see pyproject.toml)."""
import os
import os.path as osp
import socket
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS reports free (bind to port 0). It is released
    before the caller uses it, so another process could take it in between, but unlike a
    random pick it is never one that is already in use."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_tool(args, cwd=ROOT, env=None, timeout=600, check=True):
    """Run ``python ARGS`` (or a shell script when ARGS[0] ends in .sh) from the repo root."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    full_env.update(env or {})
    cmd = (['bash'] if str(args[0]).endswith('.sh') else [sys.executable]) + [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} failed ({proc.returncode}):\n'
                             f'--- stdout ---\n{proc.stdout[-6000:]}\n'
                             f'--- stderr ---\n{proc.stderr[-6000:]}')
    return proc


def tool_main(path, *args):
    """Run the ``main(argv)`` of the tool script at ``path`` in this process; returns its
    exit message ('' on success) so tests can assert the exact error a user sees."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(osp.splitext(osp.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        assert module.main([str(a) for a in args]) == 0
    except SystemExit as exc:
        return str(exc.code)
    return ''


# ---------------------------------------------------------------------------------------
# tiny BEiTViT backbones for model tests
# ---------------------------------------------------------------------------------------
TINY = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)


def cli_options(options):
    """``--cfg-options`` words for a dict of overrides (nested dicts flattened one level,
    lists written as ``[a,b]``)."""
    words = []
    for key, value in options.items():
        if isinstance(value, dict):
            words += [f'{key}.{k}={v}' for k, v in value.items()]
        elif isinstance(value, list):
            words.append(f'{key}=[{",".join(map(str, value))}]')
        else:
            words.append(f'{key}={value}')
    return words


def tiny(**kwargs):
    """A 2-block, 32-dim BEiTViT on 32 px inputs with patch 8; kwargs override."""
    from mmbeit.models.backbones.beit_vit import BEiTViT
    cfg = dict(arch=TINY, img_size=32, patch_size=8)
    cfg.update(kwargs)
    return BEiTViT(**cfg)


def randomize_(model, seed=0):
    """Random but well-scaled weights, including tables, q/v biases, gammas and LNs."""
    import math

    import torch
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('relative_position_bias_table'):
                p.normal_()
            elif 'gamma' in name:
                p.normal_(0.5, 0.1)
            elif 'norm' in name and name.endswith('weight'):
                p.normal_(1, 0.1)
            elif p.ndim == 1:
                p.normal_(0, 0.05)
            else:
                p.normal_(0, 1 / math.sqrt(max(p[0].numel(), 1)))
    return model
