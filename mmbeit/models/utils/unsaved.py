"""Frozen sub-models that live outside their parent's checkpoints.

A VQ-KD teacher (CLIP, 86M parameters) and a pretraining target generator (the
tokenizer) are frozen and have checkpoints of their own; writing them into every
checkpoint of the model that uses them costs disk and ties the file to one copy of
weights the run never changes. The official VQ-KD loader deletes its teacher's keys for
the same reason.

:func:`keep_out_of_checkpoints` makes ``parent.<name>`` invisible to the parent's state
dict in both directions: ``state_dict()`` leaves its keys out, and ``load_state_dict``
ignores such keys in a file and keeps the sub-model's current weights (so strict loading
still works). The sub-model loads its own weights in its ``init_weights()``: the Runner
calls that before it loads a checkpoint (``load_from``, ``--resume``), so training always
has them. ``mmbeit.apis.init_model`` given a checkpoint skips ``init_weights()`` and leaves
such a sub-model as built (random, or an unfitted HOG codebook): inference of the parent's
task does not use it (a VQ-KD tokenizes without its teacher), and a tool that does use it
calls its ``init_weights()`` (``tools/analysis_tools/visualize_mim.py`` for the tokenizer).
"""
import torch.nn as nn

__all__ = ['keep_out_of_checkpoints']


def keep_out_of_checkpoints(parent: nn.Module, name: str) -> None:
    """Leave ``parent.<name>`` out of ``parent``'s state dicts (see the module doc)."""
    if not isinstance(getattr(parent, name, None), nn.Module):
        raise AttributeError(f'{type(parent).__name__} has no sub-module {name!r}')
    tag = name + '.'

    def drop_on_save(module, state_dict, prefix, local_metadata):
        for key in [k for k in state_dict if k.startswith(prefix + tag)]:
            del state_dict[key]

    def keep_on_load(module, state_dict, prefix, local_metadata, strict, missing_keys,
                     unexpected_keys, error_msgs):
        for key in [k for k in state_dict if k.startswith(prefix + tag)]:
            del state_dict[key]
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            for key, value in child.state_dict(keep_vars=True).items():
                state_dict[prefix + tag + key] = value.detach() if hasattr(value, 'detach') \
                    else value

    parent.register_state_dict_post_hook(drop_on_save)
    parent.register_load_state_dict_pre_hook(keep_on_load)
