"""The simulated night as the events a client fleet would send: the schemas' payloads, in arrival order."""

from __future__ import annotations

from collections.abc import Iterator

from pipelines.reference.night import IMPRESSION, POST, PRESENCE, Night, _enum, event_id


def night_events(night: Night) -> Iterator[tuple[int, str, dict]]:
    """(arrival_ms, event_type, payload) in arrival order: the stream a client fleet would send."""
    surfaces = _enum("view", "surface")
    actions = _enum("impression", "action")
    presence_actions = _enum("presence", "action")
    seed = night.seed
    columns = (night.kind.tolist(), night.event_index.tolist(), night.event_time.tolist(),
               night.arrival.tolist(), night.post_id.tolist(), night.author_id.tolist(),
               night.viewer_id.tolist(), night.surface.tolist(), night.action.tolist())
    for kind, index, at, arrival, pid, author, viewer, surface, action in zip(*columns, strict=True):
        event = {"event_id": event_id(seed, index), "event_time": at, "post_id": pid, "author_id": author}
        if kind == POST:
            reply_to, quote_of, links, tags = night.posts[pid]
            event.update(reply_to=reply_to, quote_of=quote_of, links=links, tags=tags)
            yield arrival, "post", event
            continue
        if kind == PRESENCE:
            yield arrival, "presence", {"event_id": event["event_id"], "event_time": at, "space_id": pid,
                                        "listener_id": viewer, "action": presence_actions[action],
                                        "client": "ios" if viewer % 3 else "web"}
            continue
        event.update(viewer_id=viewer, surface=surfaces[surface], client="ios" if viewer % 3 else "web")
        if kind == IMPRESSION:
            event["action"] = actions[action]
            yield arrival, "impression", event
        else:
            yield arrival, "view", event
