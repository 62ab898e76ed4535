"""Write keys: who may post events to the collector, and their names in metrics and dead letters."""

from __future__ import annotations

import hashlib
import os
import re
import secrets

from pipelines.config import Settings
from pipelines.ingest.collector_settings import CollectorSettings, default_keys_file

KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


def load_write_keys(config: CollectorSettings) -> dict[bytes, str]:
    """sha256(key) -> key name, from VIEWCOUNT_COLLECTOR_KEYS or the keys file (`name key` per line)."""
    pairs: list[tuple[str, str]] = []
    if config.keys:
        for item in config.keys.split(","):
            name, sep, key = item.strip().partition("=")
            if not sep:
                raise ValueError("VIEWCOUNT_COLLECTOR_KEYS must look like name=key,name2=key2")
            pairs.append((name, key))
    elif config.keys_file is not None and config.keys_file.exists():
        for number, line in enumerate(config.keys_file.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, key = line.partition(" ")
            if not key.strip():
                raise ValueError(f"{config.keys_file}:{number}: a line is `name key`")
            pairs.append((name, key.strip()))
    if not pairs:
        where = config.keys_file or "the keys file"
        raise ValueError(f"no write keys: set VIEWCOUNT_COLLECTOR_KEYS=name=key (comma separated) or add "
                         f"`name key` lines to {where} (`viewcount collect --new-key NAME` writes one)")
    keys = {}
    for name, key in pairs:
        if not KEY_NAME.match(name):
            raise ValueError(f"write key name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        if len(key) < 16:
            raise ValueError(f"write key of {name!r} is shorter than 16 characters")
        keys[hashlib.sha256(key.encode()).digest()] = name
    return keys


def new_write_key(settings: Settings, name: str) -> str:
    """Add a fresh key for client `name` to the keys file (mode 600) and return it."""
    if not KEY_NAME.match(name):
        raise ValueError(f"write key name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
    path = default_keys_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as out:
        out.write(f"{name} {key}\n")
    return key
