# The released VQ-KD tokenizer of BEiT v2 (CLIP ViT-B/16 teacher, 8192 x 32 codebook,
# 3-block decoder), used frozen as the target generator: 224 x 224 input, 14 x 14 tokens
# (BEiT v2 paper section 2.2). The official file loads as is, no conversion step:
#   vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth (unilm's BEiT v2 release)
# A tokenizer trained with configs/vqkd/ loads the same way (point checkpoint at it).
model = dict(
    type='VQKD',
    encoder=dict(arch='base', img_size=224, patch_size=16),
    quantizer=dict(num_tokens=8192, embed_dims=32),
    with_decoder=False,
    frozen=True,
    checkpoint='data/pretrained/vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth',
)
