"""Every downstream config under configs/*/benchmarks/ loads what our own pretraining
writes (issue 6): the pretraining model of the matching recipe config is built, its
state dict saved as a run saves it, and each downstream model is built and initialised
from that file through its own init_cfg, with no conversion step. The 384 config then
starts from a checkpoint of the 224 fine-tuning config. One fresh process; base and
large sizes, random weights (nothing can be downloaded here)."""
import json

from _helpers import ROOT, run_tool

SCRIPT = r'''
import json, sys
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
import mmbeit, mmbeit.engine, mmbeit.models  # noqa
from mmbeit.engine.runtime import replace_sync_bn
from mmbeit.registry import MODELS

torch.set_num_threads(2)
tmp, plan = sys.argv[1], json.loads(sys.argv[2])
backbone_only = sys.argv[4] == 'backbone'


def build(cfg):
    with DefaultScope.overwrite_default_scope('mmbeit'):
        if backbone_only:  # the backbone part of the config, keys as in the full model
            model = torch.nn.Module()
            model.backbone = MODELS.build(cfg.model.backbone)
            return model
        return MODELS.build(cfg.model)


def save(model, name):
    path = f'{tmp}/{name}.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': model.state_dict()}, path)
    return path


results = {}
ft_ckpt = None  # the 224 classifier, written when the v1 base fine-tune config is in the plan
for pre_path, downstream in plan.items():
    cfg = Config.fromfile(pre_path)
    tg = cfg.model.target_generator
    for key in ('checkpoint', 'encoder_checkpoint'):
        tg.pop(key, None)
    pre = build(cfg)
    if not backbone_only:
        pre.init_weights()  # else torch's default init: random values all the same
    ckpt = save(pre, 'pretrain')
    sd = pre.state_dict()
    del pre
    for path in downstream:
        dcfg = Config.fromfile(path)
        replace_sync_bn(dcfg.model)
        dcfg.model.backbone.init_cfg.checkpoint = ckpt
        model = build(dcfg)
        model.init_weights() if not backbone_only else model.backbone.init_weights()
        got = model.backbone.state_dict()
        equal = [k for k in got if f'backbone.{k}' in sd
                 and torch.equal(got[k], sd[f'backbone.{k}'])]
        tables = sorted({tuple(v.shape) for k, v in got.items()
                         if k.endswith('relative_position_bias_table')})
        shared = sd['backbone.rel_pos_bias.relative_position_bias_table']
        first = got['blocks.0.attn.relative_position_bias_table']
        results[path] = dict(n=len(got), equal=len(equal), tables=tables,
                             table_is_shared=torch.equal(first, shared),
                             fresh=sorted(k for k in got if f'backbone.{k}' not in sd
                                          and not k.endswith('relative_position_bias_table')))
        if path.endswith('beit_vit-base_ft-100e_in1k.py'):
            ft_ckpt = save(model, 'finetuned')  # the classifier of the 224 run
            ft_sd = model.state_dict()
        del model
    if ft_ckpt is not None:
        hr = Config.fromfile(f'{sys.argv[3]}')
        hr.model.backbone.init_cfg.checkpoint = ft_ckpt
        hr.model.head.init_cfg.checkpoint = ft_ckpt
        model = build(hr)
        model.init_weights()
        got = model.state_dict()
        results['384'] = dict(
            head=torch.equal(got['head.fc.weight'], ft_sd['head.fc.weight']),
            fc_norm=torch.equal(got['backbone.fc_norm.weight'], ft_sd['backbone.fc_norm.weight']),
            qkv=torch.equal(got['backbone.blocks.11.attn.qkv.weight'],
                            ft_sd['backbone.blocks.11.attn.qkv.weight']),
            table=list(got['backbone.blocks.0.attn.relative_position_bias_table'].shape))
        ft_ckpt = None
print('RESULTS' + json.dumps(results))
'''

C = f'{ROOT}/configs'


def _run(tmp_path, plan, hr='', part='model'):
    out = run_tool(['-c', SCRIPT, tmp_path, json.dumps(plan), hr, part], timeout=900)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith('RESULTS'))
    return json.loads(line[len('RESULTS'):])


def check_downstream(res, name, n_blocks, grid, fresh):
    r = next(v for k, v in res.items() if k.endswith(name))
    assert r['fresh'] == fresh, name
    # every backbone tensor but the fresh ones and the (expanded / resized) tables is the
    # pretraining tensor, bit for bit
    assert r['equal'] == r['n'] - len(fresh) - n_blocks, name
    t = (2 * grid - 1) ** 2 + 3
    assert [s[0] for s in r['tables']] == [t], name
    assert r['table_is_shared'] == (grid == 14), name


def test_v2_base_downstream_configs_load_the_v2_pretraining(tmp_path):
    plan = {f'{C}/beitv2/beitv2_vit-base_300e.py': [
        f'{C}/beitv2/benchmarks/beitv2_vit-base_ft-100e_in1k.py',
        f'{C}/beitv2/benchmarks/beitv2_vit-base_linear-100e_in1k.py',
        f'{C}/beitv2/benchmarks/beitv2_vit-base_upernet-160k_ade20k-512.py']}
    res = _run(tmp_path, plan)
    check_downstream(res, 'beitv2_vit-base_ft-100e_in1k.py', 12, 14,
                     ['fc_norm.bias', 'fc_norm.weight'])
    check_downstream(res, 'beitv2_vit-base_linear-100e_in1k.py', 12, 14, [])  # keeps norm
    check_downstream(res, 'beitv2_vit-base_upernet-160k_ade20k-512.py', 12, 32, [])


def test_v1_base_downstream_configs_load_the_v1_pretraining_and_384_the_224_run(tmp_path):
    plan = {f'{C}/beit/beit_vit-base_800e.py': [
        f'{C}/beit/benchmarks/beit_vit-base_ft-100e_in1k.py',
        f'{C}/beit/benchmarks/beit_vit-base_linear-layer9-100e_in1k.py',
        f'{C}/beit/benchmarks/beit_vit-base_upernet-160k_ade20k-640.py']}
    res = _run(tmp_path, plan, hr=f'{C}/beit/benchmarks/beit_vit-base_ft-10e_in1k-384.py')
    check_downstream(res, 'beit_vit-base_ft-100e_in1k.py', 12, 14,
                     ['fc_norm.bias', 'fc_norm.weight'])
    check_downstream(res, 'beit_vit-base_linear-layer9-100e_in1k.py', 12, 14, [])
    check_downstream(res, 'beit_vit-base_upernet-160k_ade20k-640.py', 12, 40, [])
    assert res['384'] == dict(head=True, fc_norm=True, qkv=True, table=[47 * 47 + 3, 12])


def test_large_downstream_configs_load_the_large_pretrainings(tmp_path):
    # Backbones only (the loading is the backbone's; full ViT-L models with their
    # tokenizers would take minutes here): the settings of each large downstream config
    # must fit what the large pretraining config's backbone writes.
    res = _run(tmp_path, {f'{C}/beitv2/beitv2_vit-large_300e.py': [
        f'{C}/beitv2/benchmarks/beitv2_vit-large_ft-50e_in1k.py',
        f'{C}/beitv2/benchmarks/beitv2_vit-large_upernet-160k_ade20k-512.py']},
        part='backbone')
    check_downstream(res, 'beitv2_vit-large_ft-50e_in1k.py', 24, 14,
                     ['fc_norm.bias', 'fc_norm.weight'])
    check_downstream(res, 'beitv2_vit-large_upernet-160k_ade20k-512.py', 24, 32, [])
    res = _run(tmp_path, {f'{C}/beit/beit_vit-large_800e.py': [
        f'{C}/beit/benchmarks/beit_vit-large_ft-50e_in1k.py']}, part='backbone')
    check_downstream(res, 'beit_vit-large_ft-50e_in1k.py', 24, 14,
                     ['fc_norm.bias', 'fc_norm.weight'])
