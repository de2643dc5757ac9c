"""Language-model text features: sentence embeddings for items and queries."""

from kairos.text.encoder import BACKENDS, TextEncoder, load_encoder

__all__ = ["BACKENDS", "TextEncoder", "load_encoder"]
