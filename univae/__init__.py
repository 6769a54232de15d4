"""UniVAE in PyTorch: one shared BERT/RoFormer that is encoder, latent bottleneck and decoder."""

from univae.config import PRESETS, UniVAEConfig, preset
from univae.model import UniVAE, UniVAEOutput
from univae.transformer import Transformer, load_transformer

__all__ = ["load_transformer", "PRESETS", "UniVAEConfig", "preset", "Transformer", "UniVAE", "UniVAEOutput"]
