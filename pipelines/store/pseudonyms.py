"""Viewer pseudonyms: the secret key, and the keyed hash that names a viewer without saying who.

A pseudonym is the first 8 bytes of SHA-256(key || decimal viewer id), read as a little-endian
UInt64: the same in Python (`pseudonym`) and in ClickHouse (sql/erasure/pseudonym.sql, where the key
comes from a scalar subquery on `pseudonym_key`). Viewer ids are small integers, so anyone holding
the key can hash every id and reverse a pseudonym: the key lives in the project database only
(table `pseudonym_key`, written once by the writer as insert data, never in a statement's text,
since 18.16 shows every running statement to every user). A key rotated would orphan every stored
pseudonym (erased_viewers, the analysts' copies): there is no rotation.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from pipelines.config import REPO_ROOT
from pipelines.store.clickhouse import insert_rows
from pipelines.store.tables import PSEUDONYM_KEY, TABLE_COLUMNS

SQL_DIR = REPO_ROOT / "sql" / "erasure"
KEY_BYTES = 32


def pseudonym(key: str, viewer_id: int) -> int:
    """The viewer's pseudonym under `key` (as ClickHouse computes it)."""
    digest = hashlib.sha256(key.encode() + str(int(viewer_id)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def pseudonyms(key: str, viewer_ids: Iterable[int]) -> list[int]:
    return [pseudonym(key, v) for v in viewer_ids]


def read_key(client) -> str | None:
    found = client.execute((SQL_DIR / "pseudonym_key.sql").read_text())
    return found[0][0] if found and found[0][0] else None


def ensure_key(client) -> str:
    """The database's pseudonym key, created (random, 256 bits) when it has none."""
    key = read_key(client)
    if key is None:
        insert_rows(client, PSEUDONYM_KEY, TABLE_COLUMNS[PSEUDONYM_KEY], [(secrets.token_hex(KEY_BYTES),)])
        key = read_key(client)  # two writers racing: both read the same (smallest) key
    return key
