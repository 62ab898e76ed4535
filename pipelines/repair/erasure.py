"""Erasure of viewers: their rows leave every table that holds them, and no sketch counts them.

`erase` deletes a viewer's views and impressions (events_raw.viewer_id), presence events
(space_presence.listener_id) and dead letters (a payload whose viewer_id or listener_id field names
them) with 18.16 mutations, waits until the mutations are done, notes the hours they touched in the
ledger of changed hours and repairs them (post rollups' sketches from the archive, then the subject
rollups), so that the hours' sketches are those of the viewers left. The viewer's pseudonym (never
the raw id) goes into erased_viewers first, so a rebuild running meanwhile already skips them, and
the request into erasure_requests once done.

An erased viewer stays erased: a rebuild of the archive skips their events (sql/backfill/), and
`sweep` (every 10 minutes, Dagster) erases again any row of theirs loaded after their erasure: a
replay of the source topics (they keep 7 days and cannot drop one viewer's records), a late event,
or a new event (the stream counts it in its window; the sweep removes it and repairs the hour).

On a ClickHouse cluster (a `shape`) the deletions are mutations of the `_local` tables, made on one
replica of each shard (pipelines/store/shards.py; ZooKeeper gives them to the other replica), and the
wait for them reads every server's system.mutations: the erasure is done when no server holds the
rows (docs/scale-out.md, "The repairs on a cluster").
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pipelines.config import REPO_ROOT
from pipelines.repair import ledger
from pipelines.rollups import subject_rows
from pipelines.rollups.listeners import HEARTBEAT_TIMEOUT_MS
from pipelines.rollups.sketches import normalise_viewer_id
from pipelines.store import pseudonyms, shapes, shards
from pipelines.store.clickhouse import insert_rows
from pipelines.store.tables import (
    DEAD_LETTERS,
    ERASED_VIEWERS,
    ERASURE_REQUESTS,
    ERASURE_SWEEPS,
    EVENTS_RAW,
    SPACE_PRESENCE,
    TABLE_COLUMNS,
)

log = logging.getLogger("viewcount.erasure")
SQL_DIR = REPO_ROOT / "sql" / "erasure"
ERASURE = "erasure"
SWEEP = "sweep"
# A sweep reads rows loaded since its last run less this, for inserts under way when it ran.
SWEEP_OVERLAP = timedelta(minutes=10)
MUTATION_TIMEOUT_S = 600.0
EPOCH = datetime(1970, 1, 1)
# Each table that holds viewers: the statement counting and the one deleting their rows.
DELETES = ((EVENTS_RAW, "delete_events"), (SPACE_PRESENCE, "delete_presence"), (DEAD_LETTERS, "delete_dead_letters"))


class ErasureTimeout(RuntimeError):
    """A mutation was not done by its deadline; the erasure is incomplete and not recorded."""


def _sql(name: str, shape: shapes.ClusterShape | None = None) -> str:
    """sql/erasure/<name>.sql; a placeholder naming a table that holds viewers (`%(events_raw)s`) is
    filled with where its rows are stored: the table on one server, its `_local` table on a cluster."""
    text = (SQL_DIR / f"{name}.sql").read_text()
    for table, _ in DELETES:
        text = text.replace(f"%({table})s", shapes.stored_table(table, shape))
    return text


@dataclass
class ErasureReport:
    request_id: str
    viewers: int
    hours: list[datetime] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows deleted
    seconds: float = 0.0
    mutation_seconds: float = 0.0
    repair_seconds: float = 0.0


def wait_for_mutations(client, table: str, timeout_s: float = MUTATION_TIMEOUT_S,
                       shape: shapes.ClusterShape | None = None) -> float:
    """Poll system.mutations until the table has none pending; seconds waited. On a cluster, on every
    server: each replica applies a replicated mutation to its own parts."""
    started = time.monotonic()
    if shape is None:
        _wait_on(client, table, table, started, timeout_s)
        return time.monotonic() - started
    try:
        with shards.every_server(client, shape) as servers:
            for server in servers:
                _wait_on(server.client, table, shapes.stored_table(table, shape), started, timeout_s,
                         f" on {server.server.describe()}")
    except shards.ShardUnavailable as exc:
        raise ErasureTimeout(
            f"the mutations erasing viewers from {table} cannot be seen done on every server ({exc}); a replica "
            "that is down takes them from ZooKeeper once it is back: run the erasure again then; it is idempotent"
        ) from exc
    return time.monotonic() - started


def _wait_on(client, table: str, stored: str, started: float, timeout_s: float, where: str = "") -> None:
    while client.execute(_sql("pending_mutations"), {"table": stored})[0][0]:
        if time.monotonic() - started > timeout_s:
            raise ErasureTimeout(
                f"the mutation erasing viewers from {table}{where} was not done within {timeout_s:.0f} s "
                "(see system.mutations, column parts_to_do): run the erasure again once it is; it is idempotent")
        time.sleep(0.2)


def _rows_and_hours(client, ids: tuple[int, ...]) -> tuple[dict[str, int], set[datetime]]:
    params = {"viewer_ids": ids, "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_MS // 1000}
    events = client.execute(_sql("viewer_hours"), params)
    presence = client.execute(_sql("listener_hours"), params)
    ((dead,),) = client.execute(_sql("dead_letter_rows"), params)
    ((presence_rows,),) = client.execute(_sql("presence_rows"), params)
    hours = {subject_rows.naive_utc(h) for h, _ in (*events, *presence)}
    return {EVENTS_RAW: sum(n for _, n in events), SPACE_PRESENCE: presence_rows, DEAD_LETTERS: dead}, hours


def erase(client, viewer_ids: Iterable[int], requested_by: str, reason: str = ERASURE,
          mutation_timeout_s: float = MUTATION_TIMEOUT_S, shape: shapes.ClusterShape | None = None) -> ErasureReport:
    """Erase these viewers from every table, rebuild the hours they were in, record the request.
    On a cluster (`shape`): on every shard, and done when every server is."""
    started = time.monotonic()
    ids = tuple(sorted({normalise_viewer_id(v) for v in viewer_ids}))
    if not ids:
        raise ValueError("no viewer to erase")
    report = ErasureReport(request_id=str(uuid.uuid4()), viewers=len(ids))
    requested_at = subject_rows.server_now(client)
    key = pseudonyms.ensure_key(client)
    # First: from now on every rebuild skips them, even one running beside this erasure.
    insert_rows(client, ERASED_VIEWERS, TABLE_COLUMNS[ERASED_VIEWERS],
                [(p, requested_at, report.request_id) for p in pseudonyms.pseudonyms(key, ids)])
    report.rows, hours = _rows_and_hours(client, ids)
    deletes = [(table, _sql(statement, shape)) for table, statement in DELETES if report.rows[table]]
    if shape is None:
        for _, delete in deletes:
            client.execute(delete, {"viewer_ids": ids})
    elif deletes:
        stored = [shapes.stored_table(table, shape) for table, _ in deletes]
        with shards.one_replica_per_shard(client, shape, stored) as replicas:
            for replica in replicas:
                for _, delete in deletes:
                    replica.client.execute(delete, {"viewer_ids": ids})
    for table, _ in DELETES:
        report.mutation_seconds += wait_for_mutations(client, table, mutation_timeout_s, shape)
    repair_started = time.monotonic()
    report.hours = ledger.note_hours(client, hours, reason) if hours else []
    if report.hours:
        ledger.repair(client, scan=False, shape=shape)
    report.repair_seconds = time.monotonic() - repair_started
    insert_rows(client, ERASURE_REQUESTS, TABLE_COLUMNS[ERASURE_REQUESTS], [
        (report.request_id, requested_by, requested_at, subject_rows.server_now(client), len(ids), report.hours,
          report.rows[EVENTS_RAW], report.rows[SPACE_PRESENCE], report.rows[DEAD_LETTERS])])
    report.seconds = time.monotonic() - started
    log.info("erasure %s (%s): %d viewer(s); rows deleted: %s; %d hour(s) rebuilt in %.1f s",
             report.request_id, requested_by, len(ids), report.rows, len(report.hours), report.seconds)
    return report


def sweep(client, mutation_timeout_s: float = MUTATION_TIMEOUT_S,
          shape: shapes.ClusterShape | None = None) -> ErasureReport | None:
    """Erase again the erased viewers whose rows were loaded since the last sweep (with
    SWEEP_OVERLAP); None when there were none."""
    swept_at = subject_rows.server_now(client)
    ((last,),) = client.execute(_sql("last_sweep"))
    since = max(subject_rows.naive_utc(last) - SWEEP_OVERLAP, EPOCH) if last else EPOCH
    returned = [v for (v,) in client.execute(_sql("returned_viewers"), {"since": since})]
    report = erase(client, returned, requested_by=SWEEP, mutation_timeout_s=mutation_timeout_s,
                   shape=shape) if returned else None
    insert_rows(client, ERASURE_SWEEPS, TABLE_COLUMNS[ERASURE_SWEEPS], [(swept_at,)])
    return report
