"""Export an mmbeit checkpoint to timm, Hugging Face transformers or ONNX (docs/export.md).

    python tools/model_converters/export_checkpoint.py CHECKPOINT --to timm|hf|onnx --out DIR
        [--config CONFIG] [--kind classifier|backbone|segmentor] [--timm-name NAME]
        [--expand-rel-pos] [--opset 18] [--no-verify] [--force]

The model is built from CONFIG (default: the config saved in the checkpoint by the run
that wrote it) and the checkpoint is loaded strictly, through ``mmbeit.apis.init_model``;
the key mapping is ``mmbeit.converters.export``. DIR gets the weights
(``model.safetensors``) and ``config.json`` of the target (timm's hub config, or HF's
``BeitConfig``), or ``model.onnx``; and ``export.json``: what was exported, what was
dropped and why, how to load it, and the parity measured. Unless ``--no-verify``, the
exported model is loaded back from DIR with the target's own library (timm,
transformers, onnxruntime) and its outputs are compared with ours on random inputs; a
difference above 1e-4 is an error.
"""
import argparse
import json
import os
import os.path as osp
import sys

try:
    import mmbeit  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from mmbeit.checkpoint import (  # noqa: E402
    CheckpointError,
    atomic_output,
    read_checkpoint,
)
from mmbeit.converters.export import (  # noqa: E402
    EXPORT_KINDS,
    TARGETS,
    ExportError,
    export_onnx,
    export_state_dict,
    onnx_graph,
    settings_from_model,
    write_export,
)

TOLERANCE = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export an mmbeit checkpoint to timm, Hugging Face or ONNX '
        '(docs/export.md).')
    parser.add_argument('checkpoint', metavar='CHECKPOINT', help='a checkpoint of ours (.pth)')
    parser.add_argument('--to', required=True, choices=TARGETS, help='target format')
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder')
    parser.add_argument('--config', default=None,
                        help='the config the checkpoint was trained with (default: the one '
                        'saved in the checkpoint)')
    parser.add_argument('--kind', choices=EXPORT_KINDS, default=None,
                        help="what to export (default: the model's kind; a pretraining "
                        'checkpoint exports its backbone)')
    parser.add_argument('--timm-name', default=None,
                        help='timm model to build (default: the registered BEiT model that '
                        'needs the fewest keyword arguments)')
    parser.add_argument('--expand-rel-pos', action='store_true',
                        help='copy a shared relative position table into every block '
                        "(exact): timm's and HF's default per-layer layout, what unilm "
                        'fine-tunes from')
    parser.add_argument('--opset', type=int, default=18, help='ONNX opset (default 18)')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip loading the export back and comparing outputs')
    parser.add_argument('--force', action='store_true', help='replace an existing DIR')
    return parser.parse_args(argv)


def load_config(config, checkpoint) -> Config:
    """CONFIG, or the config text the run saved in the checkpoint's meta."""
    if config is not None:
        if not osp.isfile(config):
            sys.exit(f'error: config file {config!r} does not exist')
        cfg = Config.fromfile(config)
    else:
        try:
            meta = read_checkpoint(checkpoint).get('meta') or {}
        except CheckpointError as err:
            sys.exit(f'error: {err}')
        text = meta.get('cfg') if isinstance(meta, dict) else None
        if not isinstance(text, str):
            sys.exit(f'error: {checkpoint!r} holds no config (meta.cfg): pass the config it '
                     'was trained with as --config')
        cfg = Config.fromstring(text, file_format='.py')
    return cfg


def write_json(path, obj) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=2)
        f.write('\n')


# ----------------------------------------------------------------------------- parity

def our_output(model, kind, x):
    """What the exported model must reproduce: logits, or the backbone's features."""
    with torch.no_grad():
        if kind in ('classifier', 'segmentor'):
            return model(x, mode='tensor')
        return model.backbone(x)[-1]


def timm_output(folder, settings, kind, x):
    import timm
    tm = timm.create_model(f'local-dir:{osp.abspath(folder)}', pretrained=True).eval()
    with torch.no_grad():
        if kind == 'backbone' and settings['backbone']['out_type'] == 'raw':
            return tm.forward_features(x)
        return tm(x)


def hf_output(folder, settings, kind, x, arch):
    import transformers
    model, info = getattr(transformers, arch).from_pretrained(folder,
                                                              output_loading_info=True)
    bad = {k: sorted(v) for k, v in info.items() if k != 'error_msgs' and v}
    if bad or info.get('error_msgs'):
        raise ExportError(f'transformers did not load {folder!r} exactly: {bad} '
                          f"{info.get('error_msgs')}")
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=x)
    if kind != 'backbone':
        return out.logits
    if settings['backbone']['out_type'] == 'raw':
        return out.last_hidden_state
    return out.pooler_output


def onnx_output(path, x):
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(None, {'image': x.numpy()})[0])


def verify(args, model, settings, kind, folder, result=None):
    """Max |ours - exported| on random inputs (batch 3: the ONNX batch axis is dynamic),
    or a note saying why it was not measured."""
    h, w = settings['backbone']['img_size']
    x = torch.randn(3, settings['backbone']['in_channels'], h, w,
                    generator=torch.Generator().manual_seed(0))
    ours = our_output(model, kind, x)
    try:
        if args.to == 'timm':
            theirs = timm_output(folder, settings, kind, x)
        elif args.to == 'hf':
            theirs = hf_output(folder, settings, kind, x, result.config['architectures'][0])
        else:
            with torch.no_grad():
                ours = onnx_graph(model, kind)(x)
            theirs = onnx_output(osp.join(folder, 'model.onnx'), x)
    except ImportError as exc:
        return None, f'not measured: {exc.name} is not installed'
    if theirs.shape != ours.shape:
        raise ExportError(f'the exported model returns {tuple(theirs.shape)}, ours '
                          f'{tuple(ours.shape)}')
    diff = (theirs - ours).abs().max().item()
    return diff, f'max |ours - exported| = {diff:.3g} on 3 random inputs (fp32, CPU)'


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    if osp.exists(args.out) and not args.force:
        sys.exit(f'error: {args.out!r} exists; pass --force to replace it')
    if not osp.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint {args.checkpoint!r} does not exist')
    cfg = load_config(args.config, args.checkpoint)
    from mmbeit.apis import init_model
    try:
        model = init_model(cfg, args.checkpoint)
    except (CheckpointError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    settings = settings_from_model(model)
    kind = args.kind or ('backbone' if settings['model_kind'] == 'pretrain'
                         else settings['model_kind'])
    info = dict(source_checkpoint=osp.abspath(args.checkpoint),
                config=osp.abspath(args.config) if args.config else '(saved in the checkpoint)',
                settings=settings)
    result = None
    try:
        if args.to == 'onnx':
            with atomic_output(args.out) as tmp:
                os.makedirs(tmp)
                contract = export_onnx(model, settings, osp.join(tmp, 'model.onnx'), kind,
                                       args.opset)
                info = dict(target='onnx', kind=kind, file='model.onnx',
                            contract=contract, **info)
                write_json(osp.join(tmp, 'export.json'), info)
            print(f'wrote {osp.join(args.out, "model.onnx")}\n  input  '
                  f'{json.dumps(contract["input"])}\n  output {json.dumps(contract["output"])}')
        else:
            result = export_state_dict(model.state_dict(), settings, args.to, kind,
                                       args.timm_name, args.expand_rel_pos)
            print(result.summary())
            write_export(result, args.out, info)
            print(f'wrote {args.out}: model.safetensors, config.json, export.json')
            print('load it with:\n  ' + result.load_code.replace(
                'FOLDER', osp.abspath(args.out)).replace('\n', '\n  '))
        if not args.no_verify:
            diff, note = verify(args, model, settings, kind, args.out, result)
            print(f'parity: {note}')
            record_path = osp.join(args.out, 'export.json')
            with open(record_path, encoding='utf-8') as f:
                record = json.load(f)
            record['parity'] = note
            record['parity_max_abs_diff'] = diff
            with atomic_output(record_path) as tmp:
                write_json(tmp, record)
            if diff is not None and diff > TOLERANCE:
                sys.exit(f'error: the export differs from our model by {diff:.3g} (more '
                         f'than {TOLERANCE}); the files are in {args.out!r} for inspection')
    except ExportError as err:
        sys.exit(f'error: cannot export {args.checkpoint!r} --to {args.to}: {err}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
