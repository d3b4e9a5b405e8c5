# Runtime shared by every mmbeit config. Components without a prefix resolve in mmbeit's
# registries first and then in mmengine's (hooks, visualizer, ...); mmpretrain's and
# mmseg's parts are named with their scope, e.g. 'mmpretrain.ImageNet', 'mmseg.UPerHead'.
default_scope = 'mmbeit'

default_hooks = dict(
    # mmengine's RuntimeInfoHook, but a GPU step's losses reach the log one iteration
    # later instead of making the host wait for the step every iteration
    runtime_info=dict(type='AsyncRuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # training-step RNGs (drop path) reseeded from (seed, iteration, rank) every
    # iteration: different on every rank, replayed exactly by --resume
    iteration_seed=dict(type='IterationSeedHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # NCCL on GPUs; tools/train.py switches to gloo on machines without CUDA.
    dist_cfg=dict(backend='nccl'),
)

# LocalVisBackend writes <work_dir>/<timestamp>/vis_data/scalars.json (read by
# tools/analysis_tools/plot_curves.py). TensorBoard: `python tools/train.py CONFIG
# --tensorboard` adds mmengine's TensorboardVisBackend here for any config (events in the
# same vis_data/ folder; needs `pip install -e .[tensorboard]`). --cfg-options cannot
# append to this list (it reads dict(...) items as strings); a config of your own may
# instead list dict(type='TensorboardVisBackend') in visualizer.vis_backends.
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)

log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
