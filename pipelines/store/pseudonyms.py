"""Viewer pseudonyms: the secret key, and the keyed hash that names a viewer without saying who.

A pseudonym is the first 8 bytes of SHA-256(key || decimal viewer id), read as a little-endian
UInt64: the same in Python (`pseudonym`) and in ClickHouse (sql/erasure/pseudonym.sql, where the key
comes from a scalar subquery on `pseudonym_key`). Viewer ids are small integers, so anyone holding
the key can hash every id and reverse a pseudonym. So the key lives in a database only the writer
may use (`<database>_private`, migration 0014), written once by the writer as insert data, never in
a statement's text (18.16 shows every running statement to every user); the project database reads
it through `pseudonym_key`, a Merge table that refuses every other user. A key rotated would orphan
every stored pseudonym (erased_viewers): there is no rotation.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from pipelines.config import REPO_ROOT, private_database
from pipelines.store.tables import PSEUDONYM_KEY

SQL_DIR = REPO_ROOT / "sql" / "erasure"
KEY_BYTES = 32


def pseudonym(key: str, viewer_id: int) -> int:
    """The viewer's pseudonym under `key` (as ClickHouse computes it)."""
    digest = hashlib.sha256(key.encode() + str(int(viewer_id)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def expression(column: str, key_table: str = PSEUDONYM_KEY) -> str:
    """The same pseudonym in ClickHouse SQL, of an id column, the key read from key_table by a scalar
    subquery (never in the text): the expression of sql/erasure/pseudonym.sql."""
    return (f"reinterpretAsUInt64(substring(SHA256(concat((SELECT min(key) FROM {key_table}), "
            f"toString({column}))), 1, 8))")


def pseudonyms(key: str, viewer_ids: Iterable[int]) -> list[int]:
    return [pseudonym(key, v) for v in viewer_ids]


def read_key(client) -> str | None:
    found = client.execute((SQL_DIR / "pseudonym_key.sql").read_text())
    return found[0][0] if found and found[0][0] else None


def ensure_key(client) -> str:
    """The pseudonym key of the client's current database, created (random, 256 bits) in its
    private database when it has none."""
    key = read_key(client)
    if key is None:
        private = private_database(client.execute("SELECT currentDatabase()")[0][0])
        client.execute(f"INSERT INTO {private}.{PSEUDONYM_KEY} (key) VALUES", [(secrets.token_hex(KEY_BYTES),)])
        key = read_key(client)  # two writers racing: both read the same (smallest) key
    return key
