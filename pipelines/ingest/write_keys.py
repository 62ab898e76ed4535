"""Write keys: who may post events to the collector, kept as SHA-256 hashes, added, rotated and revoked
while it runs (a running collector re-reads the keys file within a second of a change)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pipelines.ingest.collector_settings import CollectorSettings

log = logging.getLogger("viewcount.collector")

KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
HASHED = "sha256:"
HEX_DIGEST = re.compile(r"[0-9a-f]{64}\Z")
MIN_KEY_CHARS = 16
RELOAD_EVERY_S = 1.0  # a worker looks at the keys file at most this often, on requests
LINE_FORMAT = "`name sha256:<hex> [created=<UTC time>] [expires=<UTC time>]`"
HEADER = ["# Write keys of the viewcount collector, one a line: name sha256:<hex of SHA-256(key)> created=... "
          "[expires=...].",
          "# Only hashes: a key is shown once, by `viewcount collect --new-key NAME` or `--rotate NAME`."]
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)\Z")
SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class KeyRefused(Exception):
    """A request's key may not write: the message says why and what the client can do."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def stamp(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WriteKey:
    """One key of a client: its hash, when it was made and, once rotated out, when it stops working."""

    name: str
    digest: bytes
    created: int | None = None     # Unix seconds
    expires: int | None = None     # Unix seconds; set by --rotate on the keys it replaces
    plaintext: bool = False        # read from an old `name key` line: hashed in memory, stored hashed next time

    @property
    def key_id(self) -> str:
        """A short public handle (the hash's first 12 hex digits): enough to tell keys apart in a list."""
        return self.digest.hex()[:12]

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def line(self) -> str:
        fields = [self.name, HASHED + self.digest.hex()]
        fields += [f"{label}={stamp(value)}" for label, value in (("created", self.created), ("expires", self.expires))
                   if value is not None]
        return " ".join(fields)


def _check_name(name: str, where: str = "write key name") -> None:
    if not KEY_NAME.match(name):
        raise ValueError(f"{where} {name!r}: use letters, digits, '_', '.', '-' (at most 64)")


def _parse_stamp(value: str, where: str) -> int:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a time like 2026-11-28T10:00:00Z") from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())  # no zone: UTC


def parse_line(line: str, where: str) -> WriteKey:
    """A keys file line: `name sha256:<hex> [created=...] [expires=...]`, or an old `name key` (plaintext)."""
    parts = line.split(None, 1)
    if len(parts) < 2:
        raise ValueError(f"{where}: a line is {LINE_FORMAT}")
    name, rest = parts[0], parts[1].strip()
    _check_name(name, f"{where}: write key name")
    if not rest.startswith(HASHED):
        if len(rest) < MIN_KEY_CHARS:
            raise ValueError(f"{where}: the write key of {name!r} is shorter than {MIN_KEY_CHARS} characters")
        return WriteKey(name, digest(rest), plaintext=True)
    hashed, *fields = rest.split()
    if not HEX_DIGEST.match(hashed[len(HASHED):]):
        raise ValueError(f"{where}: after {HASHED} come the 64 lowercase hex digits of the key's SHA-256")
    times: dict[str, int] = {}
    for item in fields:
        label, sep, value = item.partition("=")
        if not sep or label not in ("created", "expires") or label in times:
            raise ValueError(f"{where}: {item!r} is not a field of a key line; a line is {LINE_FORMAT}")
        times[label] = _parse_stamp(value, where)
    return WriteKey(name, bytes.fromhex(hashed[len(HASHED):]), times.get("created"), times.get("expires"))


def parse_keys_file(text: str, path: Path) -> list[WriteKey | str]:
    """The file's keys in order, with its comment and blank lines as they are (kept on a rewrite)."""
    entries: list[WriteKey | str] = []
    owners: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            entries.append(raw)
            continue
        key = parse_line(line, f"{path}:{number}")
        if owners.setdefault(key.digest, key.name) != key.name:
            raise ValueError(f"{path}:{number}: this key is also the key of {owners[key.digest]!r}: a key names "
                             "one client")
        entries.append(key)
    return entries


def keys_of(entries: list[WriteKey | str]) -> list[WriteKey]:
    return [entry for entry in entries if isinstance(entry, WriteKey)]


def parse_env_keys(text: str) -> list[WriteKey]:
    """VIEWCOUNT_COLLECTOR_KEYS: `name=key,name2=key2` (a key may also be given as sha256:<hex>)."""
    keys = []
    for item in text.split(","):
        name, sep, key = item.strip().partition("=")
        if not sep:
            raise ValueError("VIEWCOUNT_COLLECTOR_KEYS must look like name=key,name2=key2")
        _check_name(name, "VIEWCOUNT_COLLECTOR_KEYS: write key name")
        keys.append(parse_line(f"{name} {key}", "VIEWCOUNT_COLLECTOR_KEYS"))
    return keys


def read_keys_file(path: Path) -> list[WriteKey]:
    """The keys of the file; an error (with the file and line) when it cannot be read or holds none."""
    keys = keys_of(parse_keys_file(path.read_text(), path))
    if not keys:
        raise ValueError(f"no write keys in {path}: `viewcount collect --new-key NAME` adds one")
    plaintext = [key.name for key in keys if key.plaintext]
    if plaintext:
        log.warning("%s holds %d plaintext write key(s) (of %s), an older format: they work, hashed in memory; the "
                    "next `viewcount collect --new-key/--rotate/--revoke` rewrites the file with hashes only",
                    path, len(plaintext), ", ".join(sorted(set(plaintext))))
    return keys


def _signature(path: Path) -> tuple[int, int, int]:
    """What tells a changed file from the one read: a rewrite renames a new inode in, an edit moves mtime or size."""
    status = os.stat(path)
    return status.st_ino, status.st_mtime_ns, status.st_size


class KeyStore:
    """The keys a worker checks requests against: from the environment (fixed until a restart), or
    from the keys file, looked at at most once a second and re-read when it changed. A file that
    cannot be used keeps the last good keys (logged), so a bad edit never locks every client out."""

    def __init__(self, keys: list[WriteKey], path: Path | None = None, signature: tuple | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.path = path
        self.signature = signature
        self.clock, self.wall = clock, wall
        self.checked = clock()
        self.by_digest = {key.digest: key for key in keys}

    @classmethod
    def from_config(cls, config: CollectorSettings, clock: Callable[[], float] = time.monotonic,
                    wall: Callable[[], float] = time.time) -> KeyStore:
        if config.keys:
            return cls(parse_env_keys(config.keys), clock=clock, wall=wall)
        path = config.keys_file
        if path is None or not path.exists():
            raise ValueError(f"no write keys: run `viewcount collect --new-key NAME` (stores its hash in "
                             f"{path or 'the keys file'}) or set VIEWCOUNT_COLLECTOR_KEYS=name=key (comma separated)")
        signature = _signature(path)  # before reading: a change made while reading is seen at the next look
        return cls(read_keys_file(path), path, signature, clock, wall)

    def name_of(self, key: str) -> str:
        """The client name of a key that may write now; KeyRefused otherwise."""
        self.refresh()
        found = self.by_digest.get(digest(key))
        if found is None:
            raise KeyRefused("write key not recognised: ask the collector's operator for a key")
        if found.expired(self.wall()):
            raise KeyRefused(f"write key of {found.name!r} expired at {stamp(found.expires)} (it was rotated): "
                             "use the new key")
        return found.name

    def refresh(self) -> None:
        if self.path is None:
            return
        now = self.clock()
        if now - self.checked < RELOAD_EVERY_S:
            return
        self.checked = now
        try:
            signature = _signature(self.path)
        except OSError as exc:
            if self.signature is not None:
                log.error("write keys file %s: %s; keeping the %d keys read before", self.path, exc,
                          len(self.by_digest))
                self.signature = None
            return
        if signature == self.signature:
            return
        self.signature = signature
        try:
            keys = read_keys_file(self.path)
        except (OSError, ValueError) as exc:
            log.error("write keys file %s changed and cannot be used (%s): keeping the %d keys read before",
                      self.path, exc, len(self.by_digest))
            return
        self.by_digest = {key.digest: key for key in keys}
        log.warning("write keys re-read from %s: %d keys of %d clients", self.path, len(keys),
                    len({key.name for key in keys}))


def write_keys_file(path: Path, entries: list[WriteKey | str]) -> None:
    """Replace the file at once (a new file, mode 600, renamed over it): a reader sees the old or the new."""
    text = "\n".join(entry.line() if isinstance(entry, WriteKey) else entry for entry in entries) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash: writers hold the lock, so it is no one's now
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


@contextlib.contextmanager
def editing(path: Path, now: float) -> Iterator[list[WriteKey | str]]:
    """The file's entries to change in place, under a lock (two commands cannot lose each other's
    keys); written back, hashed and without the keys expired by `now`, unless the block raises."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = parse_keys_file(path.read_text(), path) if path.exists() else list(HEADER)
        entries = [e for e in entries if not (isinstance(e, WriteKey) and e.expired(now))]
        yield entries
        write_keys_file(path, entries)
    finally:
        os.close(lock)  # releases the lock


def new_write_key(path: Path, name: str, now: float | None = None) -> str:
    """Add a fresh key for client `name` (another one if it has keys: all work) and return it; only its
    hash is stored."""
    _check_name(name)
    now = time.time() if now is None else now
    key = secrets.token_urlsafe(24)
    with editing(path, now) as entries:
        entries.append(WriteKey(name, digest(key), created=int(now)))
    return key


def rotate_write_key(path: Path, name: str, grace_s: float, now: float | None = None) -> tuple[str, int]:
    """Add a fresh key for `name` and make its other keys expire `grace_s` from now (an earlier expiry
    stays): (the new key, when the old ones stop working)."""
    now = time.time() if now is None else now
    ends = int(now + grace_s)
    key = secrets.token_urlsafe(24)
    with editing(path, now) as entries:
        old = [i for i, entry in enumerate(entries) if isinstance(entry, WriteKey) and entry.name == name]
        if not old:
            raise ValueError(f"no key of {name!r} in {path} to rotate: `viewcount collect --new-key {name}` adds one")
        for i in old:
            if entries[i].expires is None or entries[i].expires > ends:
                entries[i] = replace(entries[i], expires=ends)
        entries.append(WriteKey(name, digest(key), created=int(now)))
    return key, ends


def revoke_write_keys(path: Path, name: str, now: float | None = None) -> int:
    """Remove every key of `name`; how many there were. The last keys of the file are not removed: a
    collector would keep them (it never runs without keys), so the revocation would not hold."""
    now = time.time() if now is None else now
    with editing(path, now) as entries:
        gone = [key for key in keys_of(entries) if key.name == name]
        if not gone:
            raise ValueError(f"no key of {name!r} in {path} (`viewcount collect --list-keys` lists them)")
        if len(gone) == len(keys_of(entries)):
            raise ValueError(f"{name!r} has the last keys of {path}, and a collector never runs without keys (it "
                             "would keep them): add a key for another client first, or stop the collector")
        entries[:] = [e for e in entries if not (isinstance(e, WriteKey) and e.name == name)]
    return len(gone)


def describe_keys(path: Path, now: float | None = None) -> list[str]:
    """One line a key, never the key: name, id (hash prefix), created, expiry."""
    now = time.time() if now is None else now
    lines = []
    for key in keys_of(parse_keys_file(path.read_text(), path)) if path.exists() else []:
        created = stamp(key.created) if key.created is not None else "-"
        if key.expires is None:
            expires = "plaintext line (hashed at the next rewrite)" if key.plaintext else "no expiry"
        else:
            expires = f"{'expired' if key.expired(now) else 'expires'} {stamp(key.expires)}"
        lines.append(f"{key.name:<24} {key.key_id}  created {created}  {expires}")
    return lines


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `24h` or `7d`."""
    match = DURATION.match(text.strip())
    if not match:
        raise ValueError(f"duration {text!r}: use seconds, or a number with s, m, h or d (e.g. 24h)")
    return float(match[1]) * SECONDS_PER[match[2]]


def add_key_arguments(parser) -> None:
    commands = parser.add_mutually_exclusive_group()
    commands.add_argument("--new-key", metavar="NAME", help="add a write key for client NAME (a further one if it "
                          "has keys), print it once, store only its hash, and exit")
    commands.add_argument("--rotate", metavar="NAME", help="add a new key for NAME, print it, and make NAME's other "
                          "keys stop working after --grace")
    commands.add_argument("--revoke", metavar="NAME", help="remove every key of NAME; a running collector refuses "
                          "them within a second")
    commands.add_argument("--list-keys", action="store_true", help="list the keys file: names, key ids (hash "
                          "prefixes), creation and expiry; never a key")
    parser.add_argument("--grace", default="24h", type=_grace,
                        help="with --rotate: how long the old keys keep working (default 24h; 0: not at all)")


def _grace(text: str) -> float:
    import argparse

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def key_command(args, config: CollectorSettings) -> bool:
    """Run the key command the arguments ask for, if any (ValueError for a refusal); True if one ran."""
    import sys

    path = config.keys_file
    assert path is not None, "CollectorSettings.from_env sets keys_file"
    if args.list_keys:
        print("\n".join(describe_keys(path)) or f"no write keys in {path}")
    elif args.revoke:
        count = revoke_write_keys(path, args.revoke)
        print(f"revoked {count} key(s) of {args.revoke} in {path}: a running collector refuses them within "
              f"{RELOAD_EVERY_S:g} s", file=sys.stderr)
    elif args.rotate:
        key, ends = rotate_write_key(path, args.rotate, args.grace)
        print(f"{args.rotate} {key}")
        print(f"(its hash added to {path}; the other keys of {args.rotate} work until {stamp(ends)}: move the "
              "client to this key before then; it is not shown again)", file=sys.stderr)
    elif args.new_key:
        key = new_write_key(path, args.new_key)
        print(f"{args.new_key} {key}")
        print(f"(its hash added to {path}; the key is not shown again)", file=sys.stderr)
    else:
        return False
    if config.keys and not args.list_keys:
        print("note: VIEWCOUNT_COLLECTOR_KEYS is set; a collector started with it reads those keys, not the file",
              file=sys.stderr)
    return True
