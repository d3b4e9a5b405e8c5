"""One-call GPU suite: the recipe-scale checks of BEiT v2 pretraining on one GPU.

Four parts, each in its own subprocess with a timeout (one failing or hanging part does
not lose the others), each printing a Markdown table and writing ``OUT/<part>.json``:

a. bf16 attention with the relative position bias against fp64, per SDPA backend
   (``sdpa_bias_precision.py``): output and gradients of q, k, v and the bias table,
   the bias in q's dtype and in fp32, and our ``BEiTAttention`` under autocast.
b. ``benchmark_pretrain.py`` mmbeit vs mmpretrain at base, batch 128, bf16, eager and
   ``torch.compile``d: img/s, peak memory, FLOPs per image (counted on one training step)
   and MFU against ``--peak-tflops`` (989: the H100 / H200 SXM bf16 dense datasheet peak).
c. ``tools/train.py --amp`` on the flagship config ``configs/beitv2/beitv2_vit-base_300e.py``
   for ``--train-iters`` iterations on generated JPEGs (ImageNet layout and sizes), with the
   tokenizer's random weights: loss finite and falling, img/s and data_time from the run's
   ``scalars.json``. The config is used through a derived config that only points it at
   the JPEGs and sets the length: batch, workers, a one-epoch warm-up, no checkpoints,
   a log line per iteration (written to WORK and into c.json).
d. the training DataLoader of that config built by mmengine's ``Runner.build_dataloader``
   (its pipeline, sampler, collate, pin_memory) with ``--workers`` workers, batch 128,
   over the same JPEGs: img/s.

Then a summary table, ``OUT/summary.md`` and ``OUT/summary.json``, and the total time.
Parts run in the order a, d, c, b (b, the longest, last), each within what is left of
``--budget`` seconds. Scratch data (JPEGs, work dirs, logs) goes to ``--work``, not OUT.

``--smoke`` shrinks every part so that ``--device cpu --smoke`` runs on 2 CPU cores in one to
two minutes (CI runs it): base-size attention at batch 2; the tiny benchmark model, 2 timed
iterations, mmbeit and mmpretrain eager and mmbeit compiled with the ``eager`` backend
(dynamo tracing, no code generation); 3 training iterations of the flagship config with a
tiny ViT and tokenizer (same data pipeline, 224 px); 2 loader workers, batch 4. Usage::

    python tools/analysis_tools/gpu_suite.py --device cuda --out OUT [--parts a,b,c,d]
    python tools/analysis_tools/gpu_suite.py --device cpu --smoke --out OUT

How to run it on a GPU that arrives with torch only (wheels, the device call): docs/gpu_suite.md.
"""
import argparse
import glob
import json
import math
import os
import os.path as osp
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(HERE))
FLAGSHIP = osp.join(ROOT, 'configs', 'beitv2', 'beitv2_vit-base_300e.py')
PARTS = dict(a='bf16 attention + rel-pos bias vs fp64, per SDPA backend',
             b='pretraining step, mmbeit vs mmpretrain, eager and compiled',
             c='flagship config through tools/train.py --amp',
             d='training DataLoader throughput')
RUN_ORDER = 'adcb'
# part timeouts (s): GPU sizes, and --smoke on a 2-core CPU
TIMEOUTS = dict(a=90, b=330, c=200, d=90)
SMOKE_TIMEOUTS = dict(a=120, b=240, c=180, d=120)
H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H200 SXM datasheet, dense bf16 tensor core
TINY_VIT = dict(embed_dims=64, num_layers=2, num_heads=2, feedforward_channels=128)


# ------------------------------------------------------------------------ processes
_RUNNING = set()  # process groups started by run_cmd and not yet ended


def _end_running(signum, frame):
    """SIGTERM handler of a part's process: its children run in their own process groups,
    which the suite's killpg of this process's group does not reach; end them too."""
    for pgid in list(_RUNNING):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(128 + signum)


def run_cmd(cmd, timeout: float, log_path: str, env=None, echo: bool = True) -> dict:
    """Run ``cmd`` in its own process group, echo and log its output; on timeout the
    whole group (dataloader workers, compile workers) is ended. Returns returncode (None
    on timeout), seconds and the last 4000 characters of output."""
    start = time.time()
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=ROOT, start_new_session=True)
        _RUNNING.add(proc.pid)
        tail = []

        def pump():
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                del tail[:-200]
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            code = None
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        reader.join(timeout=10)
        _RUNNING.discard(proc.pid)
    return dict(returncode=code, seconds=time.time() - start, tail=''.join(tail)[-4000:])


def child_env() -> dict:
    """The children find mmbeit in this checkout and write unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    return env


def time_left(args) -> float:
    return args.deadline - time.time()


# ------------------------------------------------------------------------ JPEG data
def _jpeg(args_tuple) -> int:
    """Write one deterministic random-ish photo-like JPEG; returns its size in bytes."""
    import cv2
    import numpy as np
    path, seed = args_tuple
    rng = np.random.default_rng([seed, 12345])
    long_side = int(rng.choice([400, 500, 500, 500, 500, 640, 800]))
    short_side = int(round(long_side / rng.choice([4 / 3, 4 / 3, 3 / 2, 1.0, 5 / 4])))
    h, w = (short_side, long_side) if rng.random() < 0.75 else (long_side, short_side)
    coarse = rng.uniform(0, 255, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))
    img = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(10, w // 2)), int(rng.integers(10, h // 2)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    img += rng.normal(0, 12, img.shape).astype(np.float32)  # texture: photo-like file sizes
    ok, buf = cv2.imencode('.jpg', np.clip(img, 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise OSError(f'could not encode {path}')
    with open(path, 'wb') as f:
        f.write(buf.tobytes())
    return len(buf)


def ensure_jpegs(root: str, count: int, classes: int = 8) -> dict:
    """``count`` JPEGs in ImageNet layout under ``root`` (train/<wnid>/<wnid>_<i>.JPEG and
    meta/train.txt as mmpretrain's ImageNet reads it); reused when already complete."""
    done = osp.join(root, f'.complete-{count}')
    if osp.exists(done):
        with open(done) as f:
            return json.load(f)
    from multiprocessing import Pool
    start = time.time()
    lines, jobs = [], []
    for i in range(count):
        wnid = f'n{i % classes:08d}'
        os.makedirs(osp.join(root, 'train', wnid), exist_ok=True)
        rel = f'{wnid}/{wnid}_{i:05d}.JPEG'
        jobs.append((osp.join(root, 'train', rel), i))
        lines.append(f'{rel} {i % classes}\n')
    with Pool(min(os.cpu_count() or 1, 16)) as pool:
        sizes = pool.map(_jpeg, jobs, chunksize=16)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    with open(osp.join(root, 'meta', 'train.txt'), 'w') as f:
        f.writelines(lines)
    info = dict(root=root, count=count, mean_kb=sum(sizes) / len(sizes) / 1024,
                seconds=time.time() - start)
    with open(done, 'w') as f:
        json.dump(info, f)
    return info


def image_count(args) -> int:
    """Enough images that one epoch of part d has 2 batches per worker, and part c's
    epochs are long enough (at least 8 iterations) not to be dominated by epoch starts."""
    return max(2 * args.workers * args.loader_batch,
               min(args.train_iters, 8) * args.train_batch)


# ------------------------------------------------------------------------ part a
def part_a(args) -> dict:
    batch = 2 if args.smoke else 32
    out = osp.join(args.work, 'a_rows.json')
    cmd = [sys.executable, osp.join(HERE, 'sdpa_bias_precision.py'), '--device', args.device,
           '--batch', str(batch), '--json', out]
    res = run_cmd(cmd, time_left(args), osp.join(args.work, 'a.log'), child_env())
    if res['returncode'] != 0:
        return dict(status='failed', log_tail=res['tail'])
    with open(out) as f:
        rows = json.load(f)['rows']
    ran = [r for r in rows if r['status'] == 'ran']
    flagged = [f'{r["kind"]} {r["backend"]} bias {r["bias"]}: {", ".join(r["flag"])}'
               for r in ran if r.get('flag')]
    with open(out) as f:
        table = json.load(f)['table']
    summary = (f'{len(ran)} of {len(rows)} rows ran ('
               f'{", ".join(sorted({r["backend"] for r in ran}))}); '
               + (f'FLAGGED: {"; ".join(flagged)}' if flagged else 'no backend flagged'))
    return dict(status='ok', batch=batch, rows=rows, flagged=flagged, table=table,
                summary=summary)


# ------------------------------------------------------------------------ part b
def _last_json(text: str, key: str):
    """The last line of ``text`` that is a JSON object holding ``key`` (a child's result;
    warnings may follow it), or None."""
    for line in reversed(text.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and key in obj:
            return obj
    return None


def part_b(args) -> dict:
    arch, batch = ('tiny', 2) if args.smoke else ('base', 128)
    iters, warmup = (2, 1) if args.smoke else (20, 3)
    backend = 'eager' if args.smoke else 'inductor'
    runs = [('mmbeit', None), ('mmpretrain', None), ('mmbeit', backend)]
    if not args.smoke:
        runs.append(('mmpretrain', backend))
    caps = dict(eager=90 if not args.smoke else 80, compiled=150 if not args.smoke else 80)
    results = []
    for impl, compile_backend in runs:
        mode = f'compiled ({compile_backend})' if compile_backend else 'eager'
        cmd = [sys.executable, osp.join(HERE, 'benchmark_pretrain.py'), '--impl', impl,
               '--arch', arch, '--batch', str(batch), '--iters', str(iters), '--warmup',
               str(warmup), '--repeats', '1', '--device', args.device, '--dtype', 'bf16']
        if compile_backend:
            cmd += ['--compile', compile_backend]
        cap = caps['compiled' if compile_backend else 'eager']
        if time_left(args) < 20:
            results.append(dict(impl=impl, mode=mode, status='skipped (no time left)'))
            continue
        res = run_cmd(cmd, min(cap, time_left(args) - 2),
                      osp.join(args.work, f'b_{impl}_{"compiled" if compile_backend else "eager"}'
                               '.log'), child_env(), echo=False)
        row = dict(impl=impl, mode=mode, seconds_run=res['seconds'])
        measured = _last_json(res['tail'], 'img_per_s')
        if res['returncode'] == 0 and measured:
            row.update(measured, status='ok')
            row['mfu'] = row['tflops'] / args.peak_tflops if args.peak_tflops else None
        else:
            row.update(status='timeout' if res['returncode'] is None else 'failed',
                       log_tail=res['tail'][-1500:])
        results.append(row)
        print(f'[b] {impl} {mode}: {row["status"]} ({res["seconds"]:.0f} s)', flush=True)
    peak = f'{args.peak_tflops:g}' if args.peak_tflops else 'no'
    lines = [f'BEiT v2 pretraining step, {arch}, batch {batch}, {args.device} bf16, '
             f'{iters} timed iters after {warmup} warm-up (+1 eager step, FLOP-counted); '
             f'MFU against {peak} peak TFLOP/s',
             '| impl | mode | img/s | s/iter | peak mem (MB) | GFLOP/img | TFLOP/s | MFU | '
             'first losses |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in results:
        if r['status'] != 'ok':
            lines.append(f'| {r["impl"]} | {r["mode"]} | {r["status"]} | | | | | | |')
            continue
        mfu = 'n/a' if r['mfu'] is None else f'{100 * r["mfu"]:.1f}%'
        lines.append(f'| {r["impl"]} | {r["mode"]} | {r["img_per_s"]:.1f} | '
                     f'{r["seconds"]:.4f} | {r["mem_mb"]:.0f} | {r["gflop_per_img"]:.4g} | '
                     f'{r["tflops"]:.4g} | {mfu} | {r["loss_1"]:.3f} / {r["loss_2"]:.3f} |')
    ratios = []
    for mode in dict.fromkeys(r['mode'] for r in results):
        ours, theirs = ({r['impl']: r for r in results if r['mode'] == mode}.get(i)
                        for i in ('mmbeit', 'mmpretrain'))
        if ours and theirs and ours['status'] == theirs['status'] == 'ok':
            ratio = dict(mode=mode, speedup=ours['img_per_s'] / theirs['img_per_s'],
                         memory=ours['mem_mb'] / max(theirs['mem_mb'], 1e-9))
            ratios.append(ratio)
            lines.append(f'| mmbeit / mmpretrain | {mode} | {ratio["speedup"]:.2f}x | | '
                         f'{ratio["memory"]:.2f}x | | | | |')
    ok = [r for r in results if r['status'] == 'ok']
    best = max((r for r in ok if r['impl'] == 'mmbeit'), key=lambda r: r['img_per_s'],
               default=None)
    summary = 'no mmbeit run finished' if best is None else (
        f'mmbeit {best["img_per_s"]:.0f} img/s {best["mode"]}, '
        f'{best["gflop_per_img"]:.4g} GFLOP/img'
        + ('' if best['mfu'] is None else f', MFU {100 * best["mfu"]:.1f}%')
        + ''.join(f'; {r["mode"]}: {r["speedup"]:.2f}x mmpretrain\'s img/s at '
                  f'{r["memory"]:.2f}x its memory' for r in ratios))
    status = 'ok' if len(ok) == len(results) else ('partial' if ok else 'failed')
    return dict(status=status, arch=arch, batch=batch, peak_tflops=args.peak_tflops,
                runs=results, ratios=ratios, table='\n'.join(lines), summary=summary)


# ------------------------------------------------------------------------ part c
def _inner_dataset(dataset_cfg: dict) -> dict:
    """The dataset inside wrappers such as SeededDataset (``dataset.dataset``)."""
    while isinstance(dataset_cfg.get('dataset'), dict):
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


def _set_data(dataset_cfg: dict, data_root: str, indices=None) -> dict:
    """The override of ``train_dataloader.dataset`` that points the config at ``data_root``,
    through a wrapper such as SeededDataset (``dataset.dataset``) when there is one."""
    inner = dict(data_root=data_root)
    if indices is not None:
        inner['indices'] = indices
    if isinstance(dataset_cfg.get('dataset'), dict):  # a wrapper: set its dataset
        return dict(dataset=_set_data(dataset_cfg['dataset'], data_root, indices))
    return inner


def train_config(args, data_root: str) -> tuple:
    """Write WORK/c_config.py: the flagship config with data, length, warm-up, logging
    and checkpointing set for this run; (path, its text, iterations it will run)."""
    from mmengine.config import Config
    base = Config.fromfile(FLAGSHIP)
    count = image_count(args)
    per_epoch = max(1, min(count // args.train_batch, args.train_iters))
    epochs = math.ceil(args.train_iters / per_epoch)
    per_epoch = math.ceil(args.train_iters / epochs)
    schedulers = []
    for s in base.param_scheduler:  # the recipe's warm-up + decay, warm-up cut to 1 epoch
        s = s.to_dict() if hasattr(s, 'to_dict') else dict(s)
        warm_up = s.get('begin', 0) == 0 and s.get('end', base.max_epochs) < base.max_epochs
        begin = 0 if warm_up or s.get('begin', 0) == 0 else 1
        s.update(begin=begin, end=1 if warm_up else max(epochs, begin + 1))
        schedulers.append(s)
    # the tokenizer keeps its random weights: no checkpoint is read
    model = dict(target_generator=dict(checkpoint=None))
    if args.smoke:  # a tiny ViT, neck and tokenizer (arch replaces the base's 'base')
        dims = {k: TINY_VIT[k] for k in ('embed_dims', 'num_heads', 'feedforward_channels')}
        model.update(backbone=dict(arch=dict(TINY_VIT, _delete_=True)),
                     neck=dict(dims, backbone_layers=TINY_VIT['num_layers'], early_layers=1),
                     head=dict(in_channels=TINY_VIT['embed_dims']))
        model['target_generator']['encoder'] = dict(arch=dict(TINY_VIT, _delete_=True))
    overrides = dict(
        train_dataloader=dict(
            batch_size=args.train_batch, num_workers=args.train_workers,
            dataset=_set_data(base.train_dataloader.dataset, data_root,
                              per_epoch * args.train_batch)),
        train_cfg=dict(max_epochs=epochs),
        param_scheduler=schedulers,
        default_hooks=dict(logger=dict(interval=1),
                           checkpoint=dict(interval=-1, save_last=False)),
        model=model)
    text = [f'# generated by {osp.relpath(__file__, ROOT)} (part c)',
            f'_base_ = [{FLAGSHIP!r}]'] + [f'{k} = {v!r}' for k, v in overrides.items()]
    path = osp.join(args.work, 'c_config.py')
    with open(path, 'w') as f:
        f.write('\n'.join(text) + '\n')
    return path, '\n'.join(text), epochs * per_epoch


def read_scalars(work_dir: str) -> list:
    """The per-iteration training records of the newest run under ``work_dir``."""
    found = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not found:
        raise FileNotFoundError(f'no */vis_data/scalars.json under {work_dir}')
    with open(found[-1]) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if 'loss' in r]


def summarize_training(records: list, batch: int) -> dict:
    losses = [r['loss'] for r in records]
    k = max(1, min(10, len(losses) // 2))
    first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
    skip = min(10, len(records) // 3)  # the first iterations: start-up, k-means init
    steady = records[skip:] or records
    seconds = sum(r['time'] for r in steady)
    return dict(iters=len(records), finite=all(math.isfinite(v) for v in losses),
                loss_first=first, loss_last=last, mean_of=k, falling=last < first,
                img_per_s=batch * len(steady) / seconds,
                data_time_ms=1e3 * statistics.median(r['data_time'] for r in steady),
                time_ms=1e3 * statistics.median(r['time'] for r in steady),
                lr_last=records[-1].get('lr'))


def part_c(args) -> dict:
    data = ensure_jpegs(osp.join(args.work, 'imagenet'), image_count(args))
    path, text, iters = train_config(args, data['root'])
    work_dir = osp.join(args.work, 'c_train')
    log = osp.join(args.work, 'c_train.log')
    base_cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), path, '--work-dir',
                work_dir, '--overwrite']
    res = run_cmd(base_cmd + ['--amp'], time_left(args) - 2, log, child_env())
    amp = '--amp'
    if (res['returncode'] not in (0, None) and args.device == 'cpu'
            and '--amp' in res['tail'][-1500:]):
        print('[c] --amp was refused on this CPU; running without it', flush=True)
        amp = 'none (--amp refused on CPU)'
        res = run_cmd(base_cmd, time_left(args) - 2, log, child_env())
    out = dict(config=text, amp=amp, images=data, planned_iters=iters,
               batch=args.train_batch, workers=args.train_workers)
    if res['returncode'] != 0:
        out.update(status='timeout' if res['returncode'] is None else 'failed',
                   log_tail=res['tail'])
        try:  # what it logged before it stopped
            out['train'] = summarize_training(read_scalars(work_dir), args.train_batch)
        except (FileNotFoundError, ValueError, statistics.StatisticsError):
            pass
        return out
    with open(log) as f:  # the lr line comes first, long before the tail
        lr_lines = [ln.strip().split(' - ')[-1] for ln in f if 'total batch' in ln]
    t = summarize_training(read_scalars(work_dir), args.train_batch)
    out.update(train=t, lr_line=lr_lines[-1] if lr_lines else None,
               status='ok' if t['finite'] else 'failed')
    model = 'tiny ViT + tokenizer (smoke)' if args.smoke else 'ViT-B/16 + VQ-KD base'
    out['table'] = '\n'.join([
        f'flagship config {osp.relpath(FLAGSHIP, ROOT)} via tools/train.py {amp}, {model}, '
        f'random tokenizer, batch {args.train_batch}, {args.train_workers} workers, '
        f'{data["count"]} generated JPEGs ({data["mean_kb"]:.0f} KB mean)',
        '| iters | loss first / last (mean of k) | finite | falling | img/s | time ms/iter '
        '| data_time ms/iter |',
        '|---|---|---|---|---|---|---|',
        f'| {t["iters"]} | {t["loss_first"]:.3f} / {t["loss_last"]:.3f} (k={t["mean_of"]}) | '
        f'{t["finite"]} | {t["falling"]} | {t["img_per_s"]:.1f} | {t["time_ms"]:.1f} | '
        f'{t["data_time_ms"]:.1f} |'] + ([f'lr: {lr_lines[-1]}'] if lr_lines else []))
    out['summary'] = (f'{t["iters"]} iters, loss {t["loss_first"]:.3f} -> '
                      f'{t["loss_last"]:.3f} ({"finite" if t["finite"] else "NOT finite"}, '
                      f'{"falling" if t["falling"] else "NOT falling"}), '
                      f'{t["img_per_s"]:.1f} img/s, data_time {t["data_time_ms"]:.1f} ms')
    return out


# ------------------------------------------------------------------------ part d
def part_d(args) -> dict:
    data = ensure_jpegs(osp.join(args.work, 'imagenet'), image_count(args))
    import torch  # noqa: F401  (before mmengine, as every tool does)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    init_default_scope('mmbeit')
    cfg = Config.fromfile(FLAGSHIP)
    loader_cfg = cfg.train_dataloader.to_dict()
    _inner_dataset(loader_cfg['dataset'])['data_root'] = data['root']
    loader_cfg.update(batch_size=args.loader_batch, num_workers=args.workers, pin_memory=True)
    start = time.time()
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    build_s = time.time() - start
    # epoch 0 starts the (persistent) workers and is not timed; epochs 1 and 2 are. Each
    # epoch starts all workers at once and ends when the last batch is in, as in training.
    timed_epochs, batches, images = 2, 0, 0
    start = time.time()
    for epoch in range(1 + timed_epochs):
        if epoch == 1:
            first_epoch_s = time.time() - start
            start = time.time()
        if hasattr(loader.sampler, 'set_epoch'):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            if epoch > 0:
                images += len(batch['inputs'][0])
                batches += 1
    seconds = time.time() - start
    ips = images / seconds
    shape = list(batch['inputs'][0].shape)
    table = '\n'.join([
        f'training DataLoader of {osp.relpath(FLAGSHIP, ROOT)} (Runner.build_dataloader, '
        f'pin_memory), {data["count"]} generated JPEGs ({data["mean_kb"]:.0f} KB mean), '
        f'{timed_epochs} epochs timed after one untimed',
        '| workers | batch | img/s | img/s per worker | first epoch (s) | batches timed |',
        '|---|---|---|---|---|---|',
        f'| {args.workers} | {args.loader_batch} | {ips:.1f} | {ips / args.workers:.1f} | '
        f'{first_epoch_s:.2f} | {batches} |'])
    return dict(status='ok' if images > 0 else 'failed', workers=args.workers,
                batch=args.loader_batch, img_per_s=ips, img_per_s_per_worker=ips / args.workers,
                first_epoch_s=first_epoch_s, build_s=build_s, batches=batches, view_shape=shape,
                images=data, table=table,
                summary=f'{ips:.1f} img/s with {args.workers} workers '
                        f'({ips / args.workers:.1f} per worker)')


# ------------------------------------------------------------------------ driver
def environment(device: str) -> dict:
    import platform
    env = dict(python=platform.python_version(), host_cpus=os.cpu_count())
    try:
        import torch
        env['torch'] = torch.__version__
        if device == 'cuda' and torch.cuda.is_available():
            env['gpu'] = torch.cuda.get_device_name(0)
            env['cuda'] = torch.version.cuda
    except ImportError:
        pass
    from importlib.metadata import PackageNotFoundError, version
    for name in ('numpy', 'mmengine', 'mmcv', 'mmcv-lite', 'mmpretrain'):
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            pass
    return env


def run_part(args) -> int:
    """Child process: one part; writes OUT/<part>.json."""
    fn = dict(a=part_a, b=part_b, c=part_c, d=part_d)[args.run_part]
    signal.signal(signal.SIGTERM, _end_running)
    start = time.time()
    result = fn(args)
    result.update(part=args.run_part, title=PARTS[args.run_part], seconds=time.time() - start)
    if 'summary' not in result:  # a failure: its last words
        lines = [ln for ln in result.get('log_tail', '').splitlines() if ln.strip()]
        result['summary'] = (lines[-1] if lines else result['status'])[:300]
    if result.get('table'):
        print(result['table'], flush=True)
    with open(osp.join(args.out, f'{args.run_part}.json'), 'w') as f:
        json.dump(result, f, indent=2)
    return 0 if result['status'] in ('ok', 'partial') else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes (CI, CPU)')
    parser.add_argument('--parts', default='a,b,c,d', help='comma-separated subset of a,b,c,d')
    parser.add_argument('--out', required=True, help='tables and JSON summaries (small)')
    parser.add_argument('--work', help='scratch: JPEGs, work dirs, logs (default: OUT/../'
                        'gpu_suite_work)')
    parser.add_argument('--budget', type=float, help='seconds for all parts together '
                        '(default: 540 on cuda, 600 with --smoke)')
    parser.add_argument('--peak-tflops', type=float, help='peak TFLOP/s for the MFU (default '
                        f'on cuda: {H200_BF16_DENSE_TFLOPS:g}, H200 SXM dense bf16)')
    parser.add_argument('--train-iters', type=int, help='part c iterations (300; smoke 3)')
    parser.add_argument('--train-batch', type=int, help='part c batch (128; smoke 2)')
    parser.add_argument('--train-workers', type=int, help='part c loader workers '
                        '(14; smoke 2)')
    parser.add_argument('--workers', type=int, help='part d loader workers (16; smoke 2)')
    parser.add_argument('--loader-batch', type=int, help='part d batch (128; smoke 4)')
    parser.add_argument('--run-part', choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument('--deadline', type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(',') if p.strip()]
    if not parts or set(parts) - set(PARTS):
        parser.error(f'--parts takes a comma-separated subset of a,b,c,d, got {args.parts!r}')
    if args.device == 'cuda' and not args.run_part:
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda: no CUDA device is visible (use --device cpu --smoke '
                         'on a machine without a GPU)')
    if args.peak_tflops is None and args.device == 'cuda':
        args.peak_tflops = H200_BF16_DENSE_TFLOPS
    defaults = dict(train_iters=(300, 3), train_batch=(128, 2), train_workers=(14, 2),
                    workers=(16, 2), loader_batch=(128, 4))  # (GPU, --smoke)
    for name, (full, smoke) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    for name in ('train_iters', 'train_batch', 'train_workers', 'workers', 'loader_batch',
                 'peak_tflops'):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f'--{name.replace("_", "-")} must be > 0, got {value}')
    args.out = osp.abspath(args.out)
    args.work = osp.abspath(args.work or osp.join(osp.dirname(args.out), 'gpu_suite_work'))
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    if args.run_part:
        return run_part(args)

    start = time.time()
    budget = args.budget or (600.0 if args.smoke else 540.0)
    timeouts = SMOKE_TIMEOUTS if args.smoke else TIMEOUTS
    results = {}
    for part in (p for p in RUN_ORDER if p in parts):
        left = budget - (time.time() - start)
        if left < 15:
            results[part] = dict(part=part, title=PARTS[part], status='skipped',
                                 summary=f'not run: {left:.0f} s of --budget left')
            continue
        timeout = min(timeouts[part], left)
        print(f'\n## part {part}: {PARTS[part]} (timeout {timeout:.0f} s)', flush=True)
        json_path = osp.join(args.out, f'{part}.json')
        if osp.exists(json_path):
            os.remove(json_path)
        cmd = [sys.executable, osp.abspath(__file__), '--run-part', part,
               '--deadline', str(time.time() + timeout - 5)] + [
            a for a in (argv if argv is not None else sys.argv[1:])]
        res = run_cmd(cmd, timeout, osp.join(args.work, f'part_{part}.log'), child_env())
        if osp.exists(json_path):
            with open(json_path) as f:
                results[part] = json.load(f)
        else:
            status = 'timeout' if res['returncode'] is None else 'failed'
            results[part] = dict(part=part, title=PARTS[part], status=status,
                                 seconds=res['seconds'], log_tail=res['tail'],
                                 summary=f'{status} after {res["seconds"]:.0f} s; log: '
                                 f'{osp.join(args.work, f"part_{part}.log")}')
            with open(json_path, 'w') as f:
                json.dump(results[part], f, indent=2)
    total = time.time() - start
    env = environment(args.device)
    lines = [f'# GPU suite ({"smoke, " if args.smoke else ""}{args.device}), '
             f'{time.strftime("%Y-%m-%d %H:%M")}',
             ', '.join(f'{k} {v}' for k, v in env.items()), '',
             '| part | what | status | seconds | result |', '|---|---|---|---|---|']
    for part in (p for p in sorted(PARTS) if p in parts):
        r = results[part]
        lines.append(f'| {part} | {PARTS[part]} | {r["status"]} | {r.get("seconds", 0):.0f} | '
                     f'{r.get("summary", "")} |')
    lines.append(f'\ntotal {total:.0f} s')
    for part in (p for p in sorted(PARTS) if p in parts):
        if results[part].get('table'):
            lines += ['', f'## {part}. {PARTS[part]}', '', results[part]['table']]
    report = '\n'.join(lines)
    print('\n' + report)
    with open(osp.join(args.out, 'summary.md'), 'w') as f:
        f.write(report + '\n')
    with open(osp.join(args.out, 'summary.json'), 'w') as f:
        json.dump(dict(environment=env, smoke=args.smoke, device=args.device,
                       total_seconds=total, parts=results), f, indent=2)
    return 0 if all(r['status'] in ('ok', 'partial') for r in results.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
