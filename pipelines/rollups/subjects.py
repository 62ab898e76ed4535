"""Tracked subjects (config/subjects.toml) and which posts are about them."""

from __future__ import annotations

import tomllib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipelines.config import Settings
from pipelines.store.queries import query_text


class UnknownSubject(LookupError):
    pass


@dataclass(frozen=True)
class Subject:
    id: str
    name: str
    root_post_id: int
    space_id: int | None
    tags: tuple[str, ...]
    time_zone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


def load_subjects(path: Path | None = None) -> dict[str, Subject]:
    """The subjects of `path`, by default the configured file (VIEWCOUNT_SUBJECTS_FILE)."""
    path = Settings.from_env().subjects_file if path is None else path
    with open(path, "rb") as f:
        entries = tomllib.load(f).get("subject", [])
    subjects = {}
    for entry in entries:
        try:
            subject = Subject(
                id=entry["id"], name=entry.get("name", entry["id"]), root_post_id=int(entry["root_post_id"]),
                space_id=entry.get("space_id"), tags=tuple(t.lower().lstrip("#") for t in entry.get("tags", [])),
                time_zone=entry.get("time_zone", "UTC"),
            )
            subject.zone  # noqa: B018 - a bad zone is a config error, found at load time
        except (KeyError, ValueError, ZoneInfoNotFoundError) as exc:
            raise ValueError(f"{path}: subject entry {entry!r} is invalid: {exc}") from exc
        subjects[subject.id] = subject
    return subjects


def get_subject(subject_id: str, path: Path | None = None) -> Subject:
    path = Settings.from_env().subjects_file if path is None else path
    subjects = load_subjects(path)
    if subject_id not in subjects:
        known = ", ".join(sorted(subjects)) or "none"
        raise UnknownSubject(f"no subject {subject_id!r} in {path}; known subjects: {known}")
    return subjects[subject_id]


def posts_about(subject: Subject, posts: Iterable[tuple[int, int, int, list[int], list[str]]]) -> set[int]:
    """Post ids about the subject, from (post_id, reply_to, quote_of, links, tags) rows.

    Seeds: the root and every post with a tracked tag; then everything that replies to,
    quotes or links a post already about it, down the tree, whatever order posts came in.
    The root itself is not in the result (its views are counted as the subject's own).
    """
    children: dict[int, list[int]] = defaultdict(list)
    tagged = []
    tracked = set(subject.tags)
    for post_id, reply_to, quote_of, links, tags in posts:
        for parent in {reply_to, quote_of, *links} - {0, None, post_id}:
            children[parent].append(post_id)
        if tracked and tracked.intersection(tags):
            tagged.append(post_id)
    about: set[int] = set()
    frontier = [subject.root_post_id, *tagged]
    about.update(tagged)
    while frontier:
        parent = frontier.pop()
        for child in children.get(parent, ()):
            if child not in about:
                about.add(child)
                frontier.append(child)
    about.discard(subject.root_post_id)
    return about


def conversation_posts(client, subject: Subject) -> tuple[set[int], dict[int, datetime]]:
    """The whole attribution walk over every stored post: (posts about the subject, creation time of
    every known post)."""
    rows = client.execute(query_text("posts_graph"))
    created = {row[0]: row[5] for row in rows}
    return posts_about(subject, ((r[0], r[1], r[2], r[3], r[4]) for r in rows)), created
