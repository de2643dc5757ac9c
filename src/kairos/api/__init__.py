"""The HTTP API: a FastAPI app over one Engine."""

from kairos.api.app import create_app

__all__ = ["create_app"]
