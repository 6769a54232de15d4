"""UniVAE in PyTorch: one shared BERT/RoFormer that is encoder, latent bottleneck and decoder."""
from univae.checkpoint import load_transformer
from univae.config import PRESETS, UniVAEConfig, preset
from univae.model import Transformer, UniVAE, UniVAEOutput

__all__ = ["load_transformer", "PRESETS", "UniVAEConfig", "preset", "Transformer", "UniVAE", "UniVAEOutput"]
