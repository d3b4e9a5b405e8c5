# The DALL-E dVAE (OpenAI), BEiT v1's tokenizer: 112 x 112 input, 14 x 14 tokens from a
# vocabulary of 8192 (BEiT paper section 2.1.2). Frozen; used by the BEiT v1 pretraining configs
# and by tools/analysis_tools/tokenize_images.py.
#
# Weights: https://cdn.openai.com/dall-e/encoder.pkl and .../decoder.pkl, pickled modules
# that are converted once to plain state dicts (the decoder is only needed for
# reconstructions):
#   python tools/model_converters/dalle_to_state_dict.py encoder.pkl \
#       data/pretrained/dall_e/dalle_encoder.pth
# or mmpretrain's converted encoder dalle_encoder.pth (a state dict with the same keys).
model = dict(
    type='DALLETokenizer',
    input_size=112,
    with_decoder=False,
    encoder_checkpoint='data/pretrained/dall_e/dalle_encoder.pth',
)
