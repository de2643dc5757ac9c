"""What Kairos knows of a user: their profile and their recent sequence, newest first."""

from __future__ import annotations

from kairos.errors import NotFound
from kairos.schema import SequenceEntry, UserView
from kairos.serving.view import ServingView


def user_view(view: ServingView, user_id: str, recent: int = 50) -> UserView:
    view.catch_up()
    with view.lock:
        record = view.store.get_user(user_id)
        state = view.state.users.get(user_id)
        if record is None and state is None:
            raise NotFound("user", user_id)
        steps = state.recent[-recent:] if state else []
        ids = view.catalog.ids
        return UserView(
            user_id=user_id,
            attributes=record.attributes if record else {},
            text=record.text if record else "",
            known=True,
            event_count=state.event_count if state else 0,
            recent=[SequenceEntry(item_id=ids[s.item], type=s.type, timestamp=s.timestamp, value=s.value)
                    for s in reversed(steps)],
        )
