# VQ-KD with a DINO ViT-B/16 teacher (BEiT v2 paper section 3.4, Table 6):
# the same recipe as the CLIP variant, but the decoder reconstructs 768-d DINO patch
# features (final-normed last-layer tokens, ImageNet mean/std input).
#
# Teacher weights: DINO ViT-B/16 in timm's layout (e.g. timm's
# vit_base_patch16_224.dino state dict, or facebookresearch/dino's
# dino_vitbase16_pretrain.pth), saved as a plain state dict.
_base_ = ['./vqkd_vit-base_clip-teacher_100e_in1k.py']

model = dict(
    teacher=dict(_delete_=True, type='DINOViT', arch='base', img_size=224, patch_size=16,
                 checkpoint='data/pretrained/dino_vit-base-p16.pth'),
    decoder_out_dims=768,
)
