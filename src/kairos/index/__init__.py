"""Vector indexes over catalogue indices, for semantic candidate sources."""

from kairos.index.vectors import VectorIndex

__all__ = ["VectorIndex"]
