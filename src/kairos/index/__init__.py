"""Vector indexes over catalogue indices: cosine (the semantic sources) and largest inner
product (the factor models' candidates in a large catalogue)."""

from kairos.index.inner_product import InnerProductIndex
from kairos.index.vectors import VectorIndex

__all__ = ["InnerProductIndex", "VectorIndex"]
