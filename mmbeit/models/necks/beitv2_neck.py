"""BEiT v2 patch-aggregation neck (BEiT v2 paper section 2.3).

The last block's cls token (before the final norm) is put in front of the patch tokens
of an early block (``early_layers``: 9 of 12 for base, 21 of 24 for large, 1-based) and
the sequence runs through ``num_layers`` (2) extra blocks that use the backbone's shared
relative position bias. The pretraining algorithm then applies the backbone's shared
final norm and the shared MIM head to its patch tokens: the second loss forces the cls
token to gather the image's information. The neck is dropped after pretraining.
Checkpoint keys: ``neck.cls_pt_layers.k.*`` (unilm's ``cls_pt_layers.k.*``).
"""
from typing import Optional

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from mmbeit.models.backbones.beit_vit import BEiTBlock, beit_init_weights_
from mmbeit.models.utils.arg_checks import check_int, check_number
from mmbeit.registry import MODELS

__all__ = ['BEiTV2Neck']


@MODELS.register_module()
class BEiTV2Neck(BaseModule):
    """Patch-aggregation blocks.

    Args:
        early_layers (int): 1-based index of the backbone block whose patch tokens are used.
        num_layers (int): extra blocks. embed_dims, num_heads, feedforward_channels: their
            sizes (the backbone's). layer_scale_init_value (float): as the backbone.
        drop_path_rate (float), backbone_layers (int): block k gets the stochastic-depth
            rate the backbone's linspace(0, rate, backbone_layers) gives position
            ``early_layers + k`` (as unilm), the last one beyond the end.
    """

    def __init__(self, early_layers: int = 9, num_layers: int = 2, embed_dims: int = 768,
                 num_heads: int = 12, feedforward_channels: int = 3072,
                 layer_scale_init_value: float = 0.1, drop_path_rate: float = 0.,
                 backbone_layers: int = 12, qv_bias: bool = True, norm_eps: float = 1e-6,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        owner = 'BEiTV2Neck'
        backbone_layers = check_int(backbone_layers, 'backbone_layers', owner)
        if not (isinstance(early_layers, int) and 1 <= early_layers <= backbone_layers):
            raise ValueError(f'{owner}: early_layers must be in [1, backbone_layers='
                             f'{backbone_layers}], got {early_layers!r}')
        num_layers = check_int(num_layers, 'num_layers', owner)
        for name, value in (('embed_dims', embed_dims), ('num_heads', num_heads),
                            ('feedforward_channels', feedforward_channels)):
            check_int(value, name, owner)
        # a negative value would silently turn layer scale off (BEiTBlock: > 0 only)
        check_number(layer_scale_init_value, 'layer_scale_init_value', owner, low=0)
        # outside [0, 1) the first training step fails in DropPath's bernoulli_
        check_number(drop_path_rate, 'drop_path_rate', owner, low=0, high=1, high_open=True)
        check_number(norm_eps, 'norm_eps', owner, low=0, low_open=True)
        self.early_layers = early_layers
        dpr = torch.linspace(0, drop_path_rate, backbone_layers).tolist()
        rates = [dpr[min(early_layers + k, backbone_layers - 1)] for k in range(num_layers)]
        self.cls_pt_layers = nn.ModuleList([
            BEiTBlock(embed_dims, num_heads, feedforward_channels, None, qv_bias,
                      layer_scale_init_value, rates[k], norm_eps=norm_eps)
            for k in range(num_layers)
        ])

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.init_cfg is not None:
            return super().init_weights()
        beit_init_weights_(self)
        for k, blk in enumerate(self.cls_pt_layers):
            blk.rescale_(self.early_layers + k + 1)

    def forward(self, cls_token: torch.Tensor, patch_tokens: torch.Tensor,
                rel_pos_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """cls_token [B, 1, D] (last block, un-normed), patch_tokens [B, N, D] (early
        block) -> [B, N+1, D] (un-normed)."""
        x = torch.cat([cls_token, patch_tokens], dim=1)
        for blk in self.cls_pt_layers:
            x = blk(x, rel_pos_bias)
        return x
