"""Config/process preparation: SyncBN fallback, work-dir protection, SLURM env."""
import pytest
from mmengine.config import Config

from mmbeit.engine.runtime import check_work_dir, prepare_runtime, replace_sync_bn, slurm_env


def test_replace_sync_bn_everywhere_and_reports_paths():
    cfg = dict(neck=dict(norm_cfg=dict(type='SyncBN', requires_grad=True)),
               heads=[dict(norm_cfg=dict(type='SyncBN')), dict(norm_cfg=dict(type='LN'))])
    changed = replace_sync_bn(cfg)
    assert changed == ['neck.norm_cfg', 'heads[0].norm_cfg']
    assert cfg['neck']['norm_cfg'] == dict(type='BN', requires_grad=True)
    assert cfg['heads'][1]['norm_cfg']['type'] == 'LN'


def test_prepare_runtime_single_process_cpu_uses_bn():
    cfg = Config(dict(model=dict(decode_head=dict(norm_cfg=dict(type='SyncBN'))),
                      env_cfg=dict(sync_bn='torch')))
    prepare_runtime(cfg, 'none')
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert cfg.env_cfg.sync_bn is None
    assert 'model_wrapper_cfg' not in cfg


def test_work_dir_with_checkpoints_is_not_overwritten(tmp_path):
    check_work_dir(str(tmp_path / 'absent'), resume=False, overwrite=False)
    check_work_dir(str(tmp_path), resume=False, overwrite=False)    # empty: fine
    (tmp_path / 'iter_4.pth').write_bytes(b'x')
    with pytest.raises(FileExistsError, match=r'iter_4\.pth.*--resume.*--work-dir.*--overwrite'):
        check_work_dir(str(tmp_path), resume=False, overwrite=False)
    check_work_dir(str(tmp_path), resume=True, overwrite=False)
    check_work_dir(str(tmp_path), resume=False, overwrite=True)


def test_slurm_env_mapping():
    env = slurm_env({'SLURM_PROCID': '3', 'SLURM_NTASKS': '8', 'SLURM_LOCALID': '1',
                     'SLURM_NODELIST': 'node[1-2]', 'MASTER_ADDR': 'node1'})
    assert env == {'RANK': '3', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1', 'MASTER_PORT': '29500',
                   'MASTER_ADDR': 'node1'}
    with pytest.raises(RuntimeError, match=r"SLURM_PROCID.*srun"):
        slurm_env({})
