"""BEiT / BEiT v2 masked-image-modeling pretraining (BEiT paper section 2.3; BEiT v2 paper
section 2.3; docs/method.md "Pretraining").

One algorithm for both versions:

- **v1** (``neck=None``): the backbone reads the view with masked patches replaced by
  the mask token; ``lm_head`` on the final-normed states at masked positions predicts the
  tokenizer's ids there (DALL-E dVAE); ``loss`` = cross-entropy.
- **v2** (``neck=BEiTV2Neck``): the same main loss (``loss_1``, VQ-KD ids) plus the
  patch-aggregation loss (``loss_2``): the last block's cls token with an early block's
  patch tokens through the neck, then the *shared* final norm and the *shared* head.

The target generator is frozen, runs without gradients and is kept out of the
algorithm's checkpoints (it loads its own weights when built, see
mmbeit/models/utils/unsaved.py), so checkpoints hold what docs/contracts.md lists for
pretraining: ``backbone.*`` (mask token, shared relative bias, ``norm``),
``neck.cls_pt_layers.*``, ``head.lm_head.*``. Fine-tuning and segmentation load them
through the backbone's load path with no conversion.
"""
import copy
from typing import Dict, List, Optional, Union

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModel

from mmbeit.models.utils import keep_out_of_checkpoints
from mmbeit.registry import MODELS

__all__ = ['BEiT']


@MODELS.register_module()
class BEiT(BaseModel):
    """Masked-image-modeling pretraining of BEiT (v1) and BEiT v2.

    Args:
        backbone (dict): a ``BEiTViT`` with ``use_mask_token=True`` and
            ``final_norm=True`` (its ``norm`` is the shared final norm).
        head (dict): a ``MIMHead`` whose ``vocab_size`` is the tokenizer's.
        target_generator (dict): a tokenizer (``VQKD``, ``DALLETokenizer``); built frozen.
        neck (dict, optional): ``BEiTV2Neck`` for BEiT v2; None for BEiT v1.
        loss_weights (tuple): v2 weights of (main, aggregation) losses; the paper's (1, 1).
    """

    def __init__(self, backbone: dict, head: dict, target_generator: dict,
                 neck: Optional[dict] = None, loss_weights=(1.0, 1.0),
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        if getattr(self.backbone, 'mask_token', None) is None:
            raise ValueError('BEiT pretraining needs a backbone with a mask token: set '
                             'model.backbone.use_mask_token=True')
        if getattr(self.backbone, 'norm', None) is None:
            raise ValueError('BEiT pretraining applies the backbone\'s final norm: set '
                             'model.backbone.final_norm=True')
        self.neck = MODELS.build(neck) if neck is not None else None
        self.head = MODELS.build(head)
        self.target_generator = MODELS.build(copy.deepcopy(target_generator))
        self.target_generator.freeze()
        keep_out_of_checkpoints(self, 'target_generator')
        self.loss_weights = tuple(loss_weights)

        grid = tuple(self.backbone.patch_resolution)
        if tuple(self.target_generator.grid) != grid:
            raise ValueError(f'the tokenizer gives a {tuple(self.target_generator.grid)} token '
                             f'grid but the backbone has a {grid} patch grid; they must match '
                             '(check the tokenizer input size and the view sizes)')
        if self.target_generator.vocab_size != self.head.vocab_size:
            raise ValueError(f'head.vocab_size={self.head.vocab_size} but the tokenizer has '
                             f'{self.target_generator.vocab_size} codes')

    def init_weights(self) -> None:
        super().init_weights()
        tg = self.target_generator
        if not (getattr(tg, 'checkpoint', None) or getattr(tg, 'encoder_checkpoint', None)):
            print_log(f'BEiT: the target generator ({type(tg).__name__}) has no checkpoint and '
                      'keeps RANDOM weights, so its tokens carry no meaning. Fine for a smoke '
                      'test; for pretraining set model.target_generator.checkpoint (VQ-KD) or '
                      'encoder_checkpoint (DALL-E).', logger='current', level=30)

    def train(self, mode: bool = True) -> 'BEiT':
        super().train(mode)
        self.target_generator.train(False)
        return self

    # ------------------------------------------------------------------ computation
    @torch.no_grad()
    def targets(self, target_inputs: torch.Tensor) -> torch.Tensor:
        """Token ids [B, N] of the tokenizer view (in [0, 1])."""
        return self.target_generator.tokenize(target_inputs)

    @staticmethod
    def masked_selector(mask: torch.Tensor, num_masked: Optional[int] = None):
        """A function taking [B, N, ...] to its masked entries [M, ...] in row-major
        order, as ``x[mask]`` does.

        ``x[mask]`` makes the host wait for the device (the number of True entries decides
        the output's size). When every row masks the same, host-known ``num_masked``
        patches (BEiT v2's exact masks; :class:`MIMDataPreprocessor` counts them on the
        host before the copy), the positions come from a stable sort instead, and the
        step never waits for the device.
        """
        if num_masked is None:
            return lambda x: x[mask]
        b, n = mask.shape
        # the True positions of each row first, each in increasing order: [B, K]
        idx = torch.argsort(mask.to(torch.int8), dim=1, descending=True,
                            stable=True)[:, :num_masked]

        def select(x: torch.Tensor) -> torch.Tensor:
            index = idx.view(b, num_masked, *([1] * (x.dim() - 2)))
            index = index.expand(b, num_masked, *x.shape[2:])
            return x.gather(1, index).flatten(0, 1)  # [B * K, ...]

        return select

    def mim_logits(self, inputs: torch.Tensor,
                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits [B, N, vocab_size] of the MIM head at every patch position.

        The backbone reads ``inputs`` (normalised, [B, 3, H, W]) with the patches where
        ``mask`` ([B, N] bool) is True replaced by the mask token; the head scores the
        final-normed last-block states. At the masked positions these are the logits
        that :meth:`loss` scores against the tokenizer's ids (BEiT v2's main term,
        ``loss_1``; the neck's aggregation term is not computed). For visualisation and
        analysis (tools/analysis_tools/visualize_mim.py); runs in the caller's grad mode.
        """
        (last, ) = self.backbone.forward_layers(inputs, [-1], mask)
        return self.head(self.backbone.norm(last)[:, 1:])

    def loss(self, inputs: torch.Tensor, target_inputs: torch.Tensor,
             mask: torch.Tensor, num_masked: Optional[int] = None) -> Dict[str, torch.Tensor]:
        select = self.masked_selector(mask, num_masked)
        labels = select(self.targets(target_inputs))  # [M]
        norm = self.backbone.norm
        if self.neck is None:
            (last, ) = self.backbone.forward_layers(inputs, [-1], mask)
            out = self.head.loss(select(norm(last)[:, 1:]), labels)
            return dict(loss=out['loss'], acc=out['acc'])
        early, last = self.backbone.forward_layers(
            inputs, [self.neck.early_layers - 1, -1], mask)
        agg = self.neck(last[:, :1], early[:, 1:], self.backbone.shared_rel_pos_bias())
        main = self.head.loss(select(norm(last)[:, 1:]), labels)
        aux = self.head.loss(select(norm(agg)[:, 1:]), labels)
        w1, w2 = self.loss_weights
        return dict(loss_1=main['loss'] * w1, acc_1=main['acc'],
                    loss_2=aux['loss'] * w2, acc_2=aux['acc'])

    def forward(self, inputs: torch.Tensor, target_inputs: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, data_samples=None, mode: str = 'tensor',
                num_masked: Optional[int] = None):
        """``mode='loss'``: the loss dict (needs ``target_inputs`` and ``mask``;
        ``num_masked``, the count of every row when they are all equal, avoids a device
        sync); ``'tensor'``: the backbone's final-normed token states [B, N+1, D]."""
        if mode == 'loss':
            if target_inputs is None or mask is None:
                raise ValueError("BEiT.forward(mode='loss') needs target_inputs and mask; use "
                                 'MIMDataPreprocessor as the data preprocessor')
            return self.loss(inputs, target_inputs, mask, num_masked)
        if mode == 'tensor':
            (last, ) = self.backbone.forward_layers(inputs, [-1], mask)
            return self.backbone.norm(last)
        raise ValueError(f"BEiT.forward: mode must be 'loss' or 'tensor', got {mode!r}; "
                         'pretraining has no predictions to evaluate: fine-tune or linear-probe '
                         'the checkpoint instead')
