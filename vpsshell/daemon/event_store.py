"""The event record's file: kept events in SQLite, so ``events`` survives a helper restart.

One table in ``STATE_DIR/events.sqlite`` (root only, 0600), in WAL mode with
``synchronous=NORMAL``: each kept event is one INSERT on the event loop's thread, a few tens of
microseconds (bench/events_store.py measures it), so recording stays synchronous and needs no
writer thread or queue. NORMAL may lose the last events before a power cut, never the file.

Only what the in-memory history keeps is written (tenant kinds with a UUID); the file is
pruned to the newest ``events_keep`` events and to ``events_keep_days`` at start and every
``PRUNE_EVERY`` writes. On start the newest events are loaded back and ``seq`` continues from
the highest stored, so it never goes back across restarts.

The file is a convenience, never a reason to stop: a file that cannot be opened at start
(read-only, not a database) is logged once and not used until the next start; a write that
fails (disk full) is logged once and tried again at each event, and a success is logged too.
Either way the helper goes on with the in-memory history.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time

from vpsshell.daemon.events import Event

log = logging.getLogger("vpsshell.events")

FILE_NAME = "events.sqlite"
PRUNE_EVERY = 1000  # writes between two prunings (at most; fewer for a small events_keep)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    domain TEXT,
    uuid TEXT NOT NULL,
    detail TEXT NOT NULL,
    user TEXT
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (time);
CREATE INDEX IF NOT EXISTS events_by_uuid ON events (uuid, seq);
"""
_INSERT = "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)"
_COLUMNS = "seq, time, kind, domain, uuid, detail, user"
_LOAD = f"SELECT {_COLUMNS} FROM events ORDER BY seq DESC LIMIT ?"  # noqa: S608 (constants)
QUERY_UUIDS_AT_ONCE = 500  # UUIDs per query (SQLite bounds the parameters of a statement)


def _cutoff(days: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - days * 86400))


class EventStore:
    """The kept events on disk; every method logs its failure and never raises."""

    def __init__(self, state_dir: str, keep: int, keep_days: int) -> None:
        self.path = os.path.join(state_dir, FILE_NAME)
        self.keep = keep
        self.keep_days = keep_days
        self._prune_every = max(1, min(PRUNE_EVERY, keep // 10))
        self._db: sqlite3.Connection | None = None
        self._writes_since_prune = 0
        self._failing = False

    def open(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            # created root-only before SQLite opens it; its -wal and -shm take the same mode
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            os.chmod(self.path, 0o600)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        except (OSError, sqlite3.Error) as exc:
            log.error(
                "events file %s cannot be used (%s); events are kept in memory only", self.path, exc
            )
            self._failing = True
            return
        self.prune()

    def load(self, limit: int) -> list[Event]:
        """The newest ``limit`` stored events, oldest first."""
        if self._db is None or limit <= 0:
            return []
        try:
            rows = self._db.execute(_LOAD, (limit,)).fetchall()
        except sqlite3.Error as exc:
            log.error(
                "events file %s cannot be read (%s); earlier events are not shown", self.path, exc
            )
            return []
        return [Event(*row) for row in reversed(rows)]

    def query(self, uuids: list[str], since: str, upto: int, limit: int) -> list[Event]:
        """The newest ``limit`` stored events of these UUIDs, at or after ``since`` (UTC text,
        "" for any) and up to ``seq`` ``upto``, oldest first. Blocking: run it in a worker
        thread. It reads on a connection of its own (WAL lets it read while the event loop
        writes); a file that cannot be read gives none, logged."""
        if self._db is None or not uuids or limit <= 0:
            return []
        found: list[Event] = []
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                for start in range(0, len(uuids), QUERY_UUIDS_AT_ONCE):
                    part = uuids[start : start + QUERY_UUIDS_AT_ONCE]
                    marks = ", ".join("?" * len(part))  # placeholders only: values are bound
                    rows = db.execute(
                        f"SELECT {_COLUMNS} FROM events WHERE uuid IN ({marks}) "  # noqa: S608
                        "AND time >= ? AND seq <= ? ORDER BY seq DESC LIMIT ?",
                        (*part, since, upto, limit),
                    ).fetchall()
                    found.extend(Event(*row) for row in rows)
            finally:
                db.close()
        except sqlite3.Error as exc:
            log.error("events file %s cannot be read (%s); older events not shown", self.path, exc)
            return []
        found.sort(key=lambda event: event.seq)
        return found[-limit:]

    def last_seq(self) -> int:
        """The highest ``seq`` ever stored (0 for none): the next event's is larger."""
        if self._db is None:
            return 0
        try:
            row = self._db.execute("SELECT max(seq) FROM events").fetchone()
        except sqlite3.Error:
            return 0
        return int(row[0] or 0)

    def add(self, event: Event) -> None:
        """Write one kept event now (it has a UUID)."""
        if self._db is None:
            return
        try:
            self._db.execute(
                _INSERT,
                (
                    event.seq,
                    event.time,
                    event.kind,
                    event.domain,
                    event.uuid,
                    event.detail,
                    event.user,
                ),
            )
        except sqlite3.Error as exc:
            if not self._failing:
                log.error(
                    "events file %s cannot be written (%s); events are kept in memory "
                    "only until it can",
                    self.path,
                    exc,
                )
                self._failing = True
            return
        if self._failing:
            log.info("events file %s is written again", self.path)
            self._failing = False
        self._writes_since_prune += 1
        if self._writes_since_prune >= self._prune_every:
            self.prune()

    def prune(self) -> None:
        """Keep the newest ``keep`` events of the last ``keep_days`` days."""
        if self._db is None:
            return
        self._writes_since_prune = 0
        try:
            self._db.execute("DELETE FROM events WHERE time < ?", (_cutoff(self.keep_days),))
            self._db.execute(
                "DELETE FROM events WHERE seq <= "
                "(SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (self.keep,),
            )
        except sqlite3.Error as exc:
            log.warning("events file %s could not be pruned (%s)", self.path, exc)

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
