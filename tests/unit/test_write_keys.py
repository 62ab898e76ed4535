"""The collector's write keys: only hashes on disk, old plaintext lines still accepted and hashed at the
next rewrite, revocation, rotation with a grace period, and a running store that follows the file
within a second and keeps its last good keys when the file goes bad. No services, clocks of our own."""

from __future__ import annotations

import hashlib
import logging
import os
import stat

import pytest

from pipelines.config import Settings
from pipelines.ingest.collector_settings import CollectorSettings
from pipelines.ingest.write_keys import (
    RELOAD_EVERY_S,
    KeyRefused,
    KeyStore,
    describe_keys,
    new_write_key,
    parse_duration,
    revoke_write_keys,
    rotate_write_key,
)

NOW = 1_764_000_000.0  # a fixed wall clock (Unix seconds)
OLD_KEY = "plaintext-key-0123456789"


class Clocks:
    """A monotonic clock and a wall clock that move only when told."""

    def __init__(self):
        self.monotonic = 1000.0
        self.wall = NOW

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds


@pytest.fixture()
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture()
def keys_file(tmp_path):
    return tmp_path / "collector" / "keys"


def store_of(keys_file, clocks: Clocks) -> KeyStore:
    config = CollectorSettings(keys_file=keys_file)
    return KeyStore.from_config(config, clock=lambda: clocks.monotonic, wall=lambda: clocks.wall)


def refused(store: KeyStore, key: str) -> str:
    with pytest.raises(KeyRefused) as caught:
        store.name_of(key)
    return str(caught.value)


def changed_later(keys_file, clocks: Clocks, change) -> None:
    """Apply a change to the file once the store's next look is due."""
    change()
    clocks.advance(RELOAD_EVERY_S)


def test_a_new_key_is_shown_once_and_only_its_hash_is_stored_private(keys_file, clocks):
    key = new_write_key(keys_file, "ios-app", now=NOW)
    text = keys_file.read_text()
    assert key not in text
    assert f"ios-app sha256:{hashlib.sha256(key.encode()).hexdigest()} created=2025-11-24T16:00:00Z" in text
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert store_of(keys_file, clocks).name_of(key) == "ios-app"
    assert refused(store_of(keys_file, clocks), "not-a-key-of-anyone-here") == (
        "write key not recognised: ask the collector's operator for a key")


def test_a_rewrite_replaces_the_file_at_once_and_leaves_no_temporary_file(keys_file):
    new_write_key(keys_file, "ios-app", now=NOW)
    before = keys_file.stat().st_ino
    new_write_key(keys_file, "web", now=NOW)
    assert keys_file.stat().st_ino != before, "a new file renamed over the old one, not written in place"
    assert sorted(p.name for p in keys_file.parent.iterdir()) == ["keys", "keys.lock"]


def test_an_old_plaintext_line_still_works_and_is_hashed_at_the_next_rewrite(keys_file, clocks, caplog):
    keys_file.parent.mkdir(parents=True)
    keys_file.write_text(f"# our clients\nlegacy {OLD_KEY}\n")
    with caplog.at_level(logging.WARNING, logger="viewcount.collector"):
        store = store_of(keys_file, clocks)
    assert store.name_of(OLD_KEY) == "legacy"
    assert "1 plaintext write key(s) (of legacy)" in caplog.text and "rewrites the file with hashes" in caplog.text

    new_key = new_write_key(keys_file, "web", now=NOW)
    text = keys_file.read_text()
    assert OLD_KEY not in text
    assert f"legacy sha256:{hashlib.sha256(OLD_KEY.encode()).hexdigest()}\n" in text
    assert text.startswith("# our clients\n"), "comments are kept"
    store = store_of(keys_file, clocks)
    assert (store.name_of(OLD_KEY), store.name_of(new_key)) == ("legacy", "web")


def test_revoke_removes_every_key_of_a_name_and_no_other(keys_file, clocks):
    first = new_write_key(keys_file, "ios-app", now=NOW)
    second = new_write_key(keys_file, "ios-app", now=NOW)
    web = new_write_key(keys_file, "web", now=NOW)
    store = store_of(keys_file, clocks)
    assert (store.name_of(first), store.name_of(second)) == ("ios-app", "ios-app"), "a name may hold two keys"

    changed_later(keys_file, clocks, lambda: revoke_write_keys(keys_file, "ios-app", now=NOW))
    assert "ios-app" not in keys_file.read_text()
    assert "not recognised" in refused(store, first) and "not recognised" in refused(store, second)
    assert store.name_of(web) == "web"


def test_the_last_keys_cannot_be_revoked_and_an_unknown_name_is_an_error(keys_file):
    new_write_key(keys_file, "web", now=NOW)
    with pytest.raises(ValueError, match="last keys"):
        revoke_write_keys(keys_file, "web", now=NOW)
    with pytest.raises(ValueError, match="no key of 'nobody'"):
        revoke_write_keys(keys_file, "nobody", now=NOW)
    assert "web sha256:" in keys_file.read_text(), "a refused command leaves the file as it was"


def test_rotation_keeps_the_old_key_working_until_its_grace_ends(keys_file, clocks):
    old = new_write_key(keys_file, "ios-app", now=NOW)
    store = store_of(keys_file, clocks)
    new, ends = rotate_write_key(keys_file, "ios-app", grace_s=parse_duration("1h"), now=clocks.wall)
    assert ends == NOW + 3600
    clocks.advance(RELOAD_EVERY_S)
    assert (store.name_of(old), store.name_of(new)) == ("ios-app", "ios-app")
    assert "expires 2025-11-24T17:00:00Z" in describe_keys(keys_file, now=clocks.wall)[0]

    clocks.advance(3600)
    assert refused(store, old) == ("write key of 'ios-app' expired at 2025-11-24T17:00:00Z (it was rotated): "
                                   "use the new key")
    assert store.name_of(new) == "ios-app"
    new_write_key(keys_file, "web", now=clocks.wall)
    assert keys_file.read_text().count("ios-app sha256:") == 1, "a rewrite drops the expired key"


def test_a_second_rotation_does_not_extend_an_earlier_expiry(keys_file):
    new_write_key(keys_file, "ios-app", now=NOW)
    _, first_end = rotate_write_key(keys_file, "ios-app", grace_s=60, now=NOW)
    rotate_write_key(keys_file, "ios-app", grace_s=3600, now=NOW + 1)
    lines = describe_keys(keys_file, now=NOW + 1)
    assert [line.split()[-1] for line in lines] == ["2025-11-24T16:01:00Z", "2025-11-24T17:00:01Z", "expiry"]


def test_a_running_store_looks_at_the_file_at_most_once_a_second(keys_file, clocks):
    new_write_key(keys_file, "web", now=NOW)
    store = store_of(keys_file, clocks)
    added = new_write_key(keys_file, "ios-app", now=NOW)
    clocks.advance(RELOAD_EVERY_S / 2)
    assert "not recognised" in refused(store, added), "not looked at yet"
    clocks.advance(RELOAD_EVERY_S / 2)
    assert store.name_of(added) == "ios-app"


def test_an_edit_in_place_is_seen_too(keys_file, clocks):
    """Not through the CLI: an operator appends a line; the same inode, another size."""
    new_write_key(keys_file, "web", now=NOW)
    store = store_of(keys_file, clocks)
    with open(keys_file, "a") as out:
        out.write(f"legacy {OLD_KEY}\n")
    clocks.advance(RELOAD_EVERY_S)
    assert store.name_of(OLD_KEY) == "legacy"


@pytest.mark.parametrize(("broken", "said"), [
    ("web sha256:nothex\n", "64 lowercase hex digits"),
    ("# every line commented out\n", "no write keys"),
    ("web short\n", "shorter than 16 characters"),
    ("web sha256:" + "0" * 64 + " expires=tomorrow\n", "is not a time"),
])
def test_a_broken_file_keeps_the_last_good_keys_and_logs_why(keys_file, clocks, caplog, broken, said):
    web = new_write_key(keys_file, "web", now=NOW)
    store = store_of(keys_file, clocks)
    with caplog.at_level(logging.ERROR, logger="viewcount.collector"):
        changed_later(keys_file, clocks, lambda: keys_file.write_text(broken))
        assert store.name_of(web) == "web"
        clocks.advance(RELOAD_EVERY_S)
        assert store.name_of(web) == "web"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "logged once per change, not once a second"
    assert said in errors[0] and "keeping the 1 keys read before" in errors[0]

    fixed = new_write_key(keys_file.with_name("other"), "fixed", now=NOW)
    changed_later(keys_file, clocks, lambda: os.replace(keys_file.with_name("other"), keys_file))
    assert store.name_of(fixed) == "fixed" and "not recognised" in refused(store, web), "a good file is read again"


def test_a_deleted_file_keeps_the_last_good_keys(keys_file, clocks, caplog):
    web = new_write_key(keys_file, "web", now=NOW)
    store = store_of(keys_file, clocks)
    with caplog.at_level(logging.ERROR, logger="viewcount.collector"):
        changed_later(keys_file, clocks, keys_file.unlink)
        assert store.name_of(web) == "web"
    assert "keeping the 1 keys read before" in caplog.text


def test_keys_from_the_environment_are_fixed_until_a_restart(keys_file, clocks):
    config = CollectorSettings(keys=f"legacy={OLD_KEY},hashed=sha256:{hashlib.sha256(b'x' * 20).hexdigest()}",
                               keys_file=keys_file)
    store = KeyStore.from_config(config, clock=lambda: clocks.monotonic, wall=lambda: clocks.wall)
    assert (store.name_of(OLD_KEY), store.name_of("x" * 20)) == ("legacy", "hashed")
    added = new_write_key(keys_file, "ios-app", now=NOW)
    clocks.advance(RELOAD_EVERY_S)
    assert "not recognised" in refused(store, added), "the keys file is not read when the environment has keys"


def test_without_any_key_the_collector_does_not_start_and_says_how_to_add_one(tmp_path):
    config = CollectorSettings.from_env(Settings.from_env(), keys="", keys_file=tmp_path / "keys")
    with pytest.raises(ValueError, match="viewcount collect --new-key NAME"):
        KeyStore.from_config(config)


def test_one_key_cannot_name_two_clients(keys_file, clocks):
    digest = hashlib.sha256(OLD_KEY.encode()).hexdigest()
    keys_file.parent.mkdir(parents=True)
    keys_file.write_text(f"a sha256:{digest}\nb {OLD_KEY}\n")
    with pytest.raises(ValueError, match=r"keys:2: this key is also the key of 'a'"):
        store_of(keys_file, clocks)


def test_the_cli_prints_a_new_key_alone_on_stdout_and_stores_its_hash_in_the_configured_file(
        keys_file, monkeypatch, capsys):
    """`KEY=$(viewcount collect --new-key demo | cut -d' ' -f2)` (README) takes the key from stdout."""
    from pipelines.ingest.collector import main

    monkeypatch.setenv("VIEWCOUNT_COLLECTOR_KEYS_FILE", str(keys_file))
    monkeypatch.delenv("VIEWCOUNT_COLLECTOR_KEYS", raising=False)
    assert main(["--new-key", "demo"]) == 0
    out, err = capsys.readouterr()
    name, key = out.split()
    assert name == "demo" and hashlib.sha256(key.encode()).hexdigest() in keys_file.read_text()
    assert "not shown again" in err
    assert main(["--revoke", "demo"]) == 2, "the last keys stay"
    assert "last keys" in capsys.readouterr().err
    assert main(["--rotate", "demo", "--grace", "30m"]) == 0
    assert capsys.readouterr().out.startswith("demo ")
    assert main(["--list-keys"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and "expires" in listed[0] and "no expiry" in listed[1]
