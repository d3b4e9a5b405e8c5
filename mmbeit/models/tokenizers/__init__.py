"""Visual tokenizers (the BEiT / BEiT v2 papers): the VQ-KD tokenizer with its normalised-EMA
quantizer and teachers, the DALL-E dVAE, and HOG tokens (no network; the demo's). All
are target generators for pretraining with one interface: ``tokenize(images in [0, 1])
-> ids [B, N]``, ``vocab_size``, ``input_size``, ``grid``, ``freeze()``
(docs/contracts.md "Target generators")."""
from .dall_e import DALLEDecoder, DALLEEncoder, DALLETokenizer, load_dalle_weights
from .hog import HOGTokenizer, patch_hog
from .quantizer import NormEMAQuantizer, codebook_usage_stats, spherical_kmeans
from .teachers import CLIPViT, DINOViT
from .vqkd import VQKD, load_tokenizer_state_dict

__all__ = [
    'CLIPViT', 'DALLEDecoder', 'DALLEEncoder', 'DALLETokenizer', 'DINOViT', 'HOGTokenizer',
    'NormEMAQuantizer', 'VQKD', 'codebook_usage_stats', 'load_dalle_weights',
    'load_tokenizer_state_dict', 'patch_hog', 'spherical_kmeans'
]
