"""Prepare a config and the process for MMEngine's Runner on any machine.

``tools/train.py`` and ``tools/test.py`` call :func:`run`, which calls :func:`prepare_runtime`
and builds a :class:`~mmbeit.engine.runner.BEiTRunner` (mmengine's Runner, reading
checkpoints weights-only and strictly). It fixes what stock mmengine 0.10.7 cannot do on its own:

* **Multi-process on CPU.** mmengine's ``init_dist`` calls ``torch.cuda.set_device``
  unconditionally and DDP is built with ``device_ids=[local_rank]``. On a machine
  without CUDA we initialise the process group ourselves with gloo (the Runner then
  skips its own ``init_dist``) and wrap the model with ``device_ids=None``. On GPUs
  nothing changes: mmengine initialises NCCL as usual.
* **SyncBN where it cannot run.** ``SyncBN`` needs CUDA and a process group; on CPU (one
  process or many) and in a single GPU process every ``norm_cfg`` of type ``SyncBN`` in
  the model config becomes ``BN``, and the log says so.
* **The recipe's lr for any number of processes.** :func:`run` scales a training config's
  lr to its total batch (world size x batch x gradient accumulation) before the Runner is
  built, unless turned off, and logs the total batch and the lr on rank 0
  (:mod:`mmbeit.engine.lr_scaling`).
* **The work dir is not overwritten.** A work dir that already holds a run's checkpoints
  is refused unless the run resumes it (``--resume``) or ``--overwrite`` is given.

:func:`shutdown_distributed` ends a process group cleanly (barrier, then destroy: without
the barrier gloo runs sometimes die with ``terminate called without an active
exception`` at exit).
"""
import glob
import os
import os.path as osp
import subprocess
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log

from mmbeit.engine.lr_scaling import scale_lr_in_config, world_size_from_env

__all__ = ['prepare_runtime', 'shutdown_distributed', 'check_work_dir', 'replace_sync_bn',
           'slurm_env', 'load_config', 'run', 'add_config_args', 'parse_tool_args',
           'training_world_size']


def slurm_env(environ=os.environ) -> dict:
    """The torch.distributed environment (RANK, WORLD_SIZE, ...) of a SLURM task."""
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')
               if k not in environ]
    if missing:
        raise RuntimeError(f'--launcher slurm needs the SLURM variables {missing}; run it '
                           f'through srun (see tools/slurm_train.sh)')
    env = {
        'RANK': environ['SLURM_PROCID'],
        'WORLD_SIZE': environ['SLURM_NTASKS'],
        'LOCAL_RANK': environ.get('SLURM_LOCALID', '0'),
        'MASTER_PORT': environ.get('MASTER_PORT', '29500'),
    }
    if 'MASTER_ADDR' in environ:
        env['MASTER_ADDR'] = environ['MASTER_ADDR']
    else:
        env['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {environ["SLURM_NODELIST"]} | head -n1').strip()
    return env


def _init_cpu_process_group(launcher: str, timeout_s: int = 1800) -> None:
    if launcher == 'slurm':
        os.environ.update(slurm_env())
    elif launcher != 'pytorch':
        raise ValueError(f'launcher {launcher!r} on a machine without CUDA: use '
                         f"'pytorch' (torchrun, tools/dist_train.sh) or 'slurm'")
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        if key not in os.environ:
            raise RuntimeError(f'--launcher {launcher} but {key} is not set: start the run '
                               f'with tools/dist_train.sh (torchrun) or srun')
    dist.init_process_group('gloo', timeout=timedelta(seconds=timeout_s))


def replace_sync_bn(cfg) -> list:
    """Turn every ``SyncBN`` norm config under ``cfg`` into ``BN``; returns the paths."""
    changed = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get('type') in ('SyncBN', 'mmcv.SyncBN', 'torch.nn.SyncBatchNorm'):
                node['type'] = 'BN'
                changed.append(path or '<root>')
            for key, value in node.items():
                walk(value, f'{path}.{key}' if path else str(key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f'{path}[{i}]')

    walk(cfg, '')
    return changed


def check_work_dir(work_dir: str, resume, overwrite: bool) -> None:
    """Refuse to write a new run over the checkpoints of an earlier one."""
    if resume or overwrite or not osp.isdir(work_dir):
        return
    old = sorted(glob.glob(osp.join(work_dir, '*.pth')))
    if old or osp.exists(osp.join(work_dir, 'last_checkpoint')):
        shown = ', '.join(osp.basename(p) for p in old[:3]) + (' ...' if len(old) > 3 else '')
        raise FileExistsError(
            f'work dir {work_dir!r} already holds checkpoints of an earlier run ({shown}). '
            f'Pass --resume to continue that run, --work-dir to start a new one elsewhere, '
            f'or --overwrite to let this run replace them.')


def prepare_runtime(cfg: Config, launcher: str = 'none') -> Config:
    """Adapt ``cfg`` (in place) and the process to this machine; see the module doc."""
    cuda = torch.cuda.is_available()
    distributed = launcher != 'none'
    if distributed and not cuda:
        if not (dist.is_available() and dist.is_initialized()):
            timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout', 1800)
            _init_cpu_process_group(launcher, timeout)
        wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(
            type='MMDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
        wrapper['device_ids'] = None   # CPU parameters: DDP must not be given a device
        cfg.model_wrapper_cfg = wrapper
        env = cfg.setdefault('env_cfg', ConfigDict())
        env.setdefault('dist_cfg', ConfigDict())['backend'] = 'gloo'
        print_log(f'CPU distributed run: gloo process group, rank {dist.get_rank()} of '
                  f'{dist.get_world_size()}', logger='current')
    if not (distributed and cuda):
        where = 'a CPU run' if not cuda else 'a single-process run'
        changed = replace_sync_bn(cfg.get('model', {}))
        if changed:
            print_log(f'SyncBN needs CUDA and several processes; using BN instead in {where} '
                      f'for: {", ".join(changed)}', logger='current')
        if cfg.get('env_cfg', {}).get('sync_bn'):
            cfg.env_cfg.sync_bn = None
    return cfg


def add_config_args(parser, example: str) -> None:
    """The flags every tool shares: --cfg-options, --launcher (and torchrun's --local-rank)."""
    import argparse

    from mmbeit.engine.config_checks import CfgOptionsAction
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction,
                        help=f'override config entries, e.g. {example}')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)


def parse_tool_args(parser, argv=None):
    """Parse, and give older launchers' --local-rank to LOCAL_RANK as torchrun would."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(path: str, launcher: str, cfg_options=None, work_dir=None) -> Config:
    """Read a config, apply the flags train.py and test.py share, and check the model
    config's keys (:func:`~mmbeit.engine.config_checks.check_model_config`: a misspelt key
    raises ``UnknownConfigKeyError`` naming its path and the closest valid names)."""
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('model') is not None:  # a misspelt key: the path, the class, the close names
        from mmbeit.engine.config_checks import check_model_config
        check_model_config(cfg.model, scope=cfg.get('default_scope', 'mmbeit'))
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def training_world_size(launcher: str) -> int:
    """Processes of this run: the process group's size once it exists (CPU runs), else
    what the launcher's environment says (GPU runs: the Runner initialises NCCL later)."""
    if launcher != 'none' and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return world_size_from_env(launcher)


def run(cfg: Config, method: str, scale_lr_off_by: Optional[str] = None) -> None:
    """Prepare this machine, build the Runner from ``cfg`` and call ``runner.<method>()``;
    the process group, if any, is closed however that ends.

    For ``method='train'`` the lr is first scaled to the total batch
    (:func:`mmbeit.engine.lr_scaling.scale_lr_in_config`; ``scale_lr_off_by`` names the
    flag that turned that off) and rank 0 logs the total batch and lr before training."""
    from mmbeit.engine.runner import BEiTRunner
    launcher = cfg.get('launcher', 'none')
    prepare_runtime(cfg, launcher)
    try:
        line = None
        if method == 'train':
            line = scale_lr_in_config(cfg, training_world_size(launcher), scale_lr_off_by)
            if cfg.get('resume'):
                line += ('; resuming: the lr schedule continues from the checkpoint\'s '
                         'optimizer and scheduler states')
        runner = BEiTRunner.from_cfg(cfg)
        if line is not None and runner.rank == 0:
            print_log(line, logger='current')
        getattr(runner, method)()
    finally:
        shutdown_distributed()


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
