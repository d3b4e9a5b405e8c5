"""mmbeit's registries: one child of each of mmengine's root registries.

Every registry mmengine defines has a child here with ``locations`` pointing at the
mmbeit package that fills it, so ``default_scope='mmbeit'`` finds our classes, falls
back to mmengine's for the generic ones (runners, loops, optimizers, ...) and reaches
``mmpretrain.X`` / ``mmseg.X`` through the scope prefix. We never hang our registries
under mmpretrain's or mmseg's: a config can mix all three and each keeps its own names.
"""
from importlib.metadata import PackageNotFoundError, version

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import INFERENCERS as MMENGINE_INFERENCERS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNER_CONSTRUCTORS as MMENGINE_RUNNER_CONSTRUCTORS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry

__all__ = [
    'RUNNERS', 'RUNNER_CONSTRUCTORS', 'LOOPS', 'HOOKS', 'STRATEGIES', 'DATASETS',
    'DATA_SAMPLERS', 'TRANSFORMS', 'MODELS', 'MODEL_WRAPPERS', 'WEIGHT_INITIALIZERS',
    'OPTIMIZERS', 'OPTIM_WRAPPERS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS',
    'METRICS', 'EVALUATOR', 'TASK_UTILS', 'VISUALIZERS', 'VISBACKENDS',
    'LOG_PROCESSORS', 'INFERENCERS', 'FUNCTIONS'
]


# -- the one adjustment mmbeit makes to the OpenMMLab stack it runs on ----------
#
# mmpretrain 1.2.0 imports its multimodal models (BLIP, Flamingo, OFA, ...) whenever
# pycocotools and transformers >= 4.28 are both installed (``mmpretrain.utils.dependency.
# WITH_MULTIMODAL``). pycocotools comes with mmdet, and those models are written for
# transformers 4.x: under 5.x ``import mmpretrain.models`` fails (``TypeError: NoneType takes
# no arguments`` from a name transformers 5 removed). mmdet.models imports mmpretrain.models
# and mmseg.models imports mmdet.models, so every detection *and* segmentation config would
# fail. mmbeit uses none of the multimodal models; with transformers 5 installed it turns
# the flag off, so mmpretrain registers its own placeholders for them (building one then says
# which extra to install) and everything else imports.
#
# It runs when this module is imported, which every config with
# ``default_scope='mmbeit'`` and every mmbeit tool does before the stack's models; a bare
# ``import mmbeit`` still changes nothing.


def multimodal_off() -> bool:
    """Whether mmpretrain's multimodal models must stay unimported here (transformers >= 5)."""
    try:
        major = int(version('transformers').split('.')[0])
    except (PackageNotFoundError, ValueError):
        return False  # without transformers mmpretrain already skips them
    return major >= 5


def switch_off_broken_multimodal() -> None:
    """Set ``WITH_MULTIMODAL = False`` in mmpretrain before its models are imported."""
    if not multimodal_off():
        return
    import mmpretrain.utils.dependency as dependency
    dependency.WITH_MULTIMODAL = False


switch_off_broken_multimodal()

# runtime
RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, locations=['mmbeit.engine'])
RUNNER_CONSTRUCTORS = Registry(
    'runner constructor', parent=MMENGINE_RUNNER_CONSTRUCTORS, locations=['mmbeit.engine'])
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, locations=['mmbeit.engine'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, locations=['mmbeit.engine'])
STRATEGIES = Registry('strategy', parent=MMENGINE_STRATEGIES, locations=['mmbeit.engine'])
LOG_PROCESSORS = Registry(
    'log processor', parent=MMENGINE_LOG_PROCESSORS, locations=['mmbeit.engine'])

# data
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, locations=['mmbeit.datasets'])
DATA_SAMPLERS = Registry(
    'data sampler', parent=MMENGINE_DATA_SAMPLERS, locations=['mmbeit.datasets'])
TRANSFORMS = Registry(
    'transform', parent=MMENGINE_TRANSFORMS, locations=['mmbeit.datasets.transforms'])

# models
MODELS = Registry('model', parent=MMENGINE_MODELS, locations=['mmbeit.models'])
MODEL_WRAPPERS = Registry(
    'model wrapper', parent=MMENGINE_MODEL_WRAPPERS, locations=['mmbeit.models'])
WEIGHT_INITIALIZERS = Registry(
    'weight initializer', parent=MMENGINE_WEIGHT_INITIALIZERS, locations=['mmbeit.models'])
TASK_UTILS = Registry('task util', parent=MMENGINE_TASK_UTILS,
                      locations=['mmbeit.models', 'mmbeit.datasets'])

# optimisation
OPTIMIZERS = Registry(
    'optimizer', parent=MMENGINE_OPTIMIZERS, locations=['mmbeit.engine.optimizers'])
OPTIM_WRAPPERS = Registry(
    'optim wrapper', parent=MMENGINE_OPTIM_WRAPPERS, locations=['mmbeit.engine.optimizers'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    locations=['mmbeit.engine.optimizers'])
PARAM_SCHEDULERS = Registry(
    'parameter scheduler', parent=MMENGINE_PARAM_SCHEDULERS,
    locations=['mmbeit.engine.optimizers'])

# evaluation and visualisation
METRICS = Registry('metric', parent=MMENGINE_METRICS, locations=['mmbeit.evaluation'])
EVALUATOR = Registry('evaluator', parent=MMENGINE_EVALUATOR, locations=['mmbeit.evaluation'])
VISUALIZERS = Registry(
    'visualizer', parent=MMENGINE_VISUALIZERS, locations=['mmbeit.visualization'])
VISBACKENDS = Registry(
    'vis backend', parent=MMENGINE_VISBACKENDS, locations=['mmbeit.visualization'])

# inference and plain functions
INFERENCERS = Registry('inferencer', parent=MMENGINE_INFERENCERS, locations=['mmbeit.apis'])
FUNCTIONS = Registry('function', parent=MMENGINE_FUNCTIONS, locations=['mmbeit.engine'])
