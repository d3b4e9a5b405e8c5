"""``BEiTRunner``: mmengine's Runner, reading checkpoints through mmbeit's checkpoint layer.

Every tool of mmbeit builds this Runner (:func:`mmbeit.engine.runtime.run`). It changes one
method of mmengine 0.10.7's Runner, :meth:`load_checkpoint`, which both ``load_from``
(``tools/test.py CONFIG CKPT``, fine-tuning from a whole-model file) and ``--resume`` call:

* the file is read by :func:`mmbeit.checkpoint.read_checkpoint`: weights-only, with the
  few extra types a Runner checkpoint holds allowed for that one call, so a checkpoint
  written by stock mmengine resumes without turning weights-only off; a missing, truncated
  or unsafe file is an error naming it;
* the weights are loaded by :func:`mmbeit.checkpoint.load_state_dict_checked`, strictly
  by default: stock mmengine loads ``load_from`` non-strictly, so a checkpoint that does
  not fit is evaluated with random weights after one log line; here it is an error naming
  the keys. (Initialising only a part from a pretrained file is the job of
  ``init_cfg=dict(type='Pretrained', ...)``, which reports what stays fresh.)

Saving is mmengine's own; nothing here changes mmengine for code that does not use this
class.
"""
import re
from typing import Callable, Union

from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from mmbeit.checkpoint import load_state_dict_checked, read_checkpoint, unwrap_state_dict
from mmbeit.registry import RUNNERS

__all__ = ['BEiTRunner']


@RUNNERS.register_module()
class BEiTRunner(Runner):
    """mmengine's Runner with weights-only, strict checkpoint loading (module docstring)."""

    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu',
                        strict: bool = True, revise_keys: list = ()) -> dict:
        """Read ``filename`` (weights-only) and load its state dict into the model.

        Args:
            filename: a local checkpoint file.
            map_location: as for ``torch.load``.
            strict: raise :class:`mmbeit.checkpoint.CheckpointMismatchError`, naming the
                keys, when the file does not fit the model (default). ``False`` only logs
                the differences.
            revise_keys: ``(pattern, replacement)`` regular expressions applied to the keys
                after the container is unwrapped (mmengine's argument; a ``module.``
                prefix is already stripped by the unwrap rule).
        """
        checkpoint = read_checkpoint(filename, map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        state_dict = unwrap_state_dict(checkpoint)[0]
        for pattern, replacement in revise_keys:
            state_dict = type(state_dict)(
                (re.sub(pattern, replacement, k), v) for k, v in state_dict.items())
        load_state_dict_checked(model, state_dict, source=repr(filename), strict=strict)
        self._has_loaded = True
        return checkpoint
