"""Ids in request paths, validated as the same ids in bodies are (schema.EntityId):
a control character in `/v1/items/a%1Ab` is the caller's mistake, a 422 naming it."""

from typing import Annotated

from fastapi import Path

from kairos.schema import EntityId

ItemId = Annotated[EntityId, Path(min_length=1, max_length=256)]
UserId = Annotated[EntityId, Path(min_length=1, max_length=256)]
PathId = Annotated[EntityId, Path(min_length=1, max_length=256)]  # campaigns, notifications
