"""Benchmark: the cost of recording one kept event, in memory only and with the SQLite file.

``EventRecord.record`` runs on the helper's event loop, so with an ``EventStore`` each kept
event is one INSERT there (WAL, ``synchronous=NORMAL``, pruning every 1000 writes included).
Records ``--events`` console events over 20 domains into a fresh temp dir, several rounds, and
prints the median microseconds per event of each round for both. The file is in the temp dir's
file system: run it with ``TMPDIR`` on the disk ``state_dir`` lives on.

    python bench/events_store.py [--events 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

from vpsshell.daemon.event_store import EventStore
from vpsshell.daemon.events import EventRecord


def microseconds_per_event(store: EventStore | None, events: int) -> float:
    record = EventRecord(1000, 256, store)
    started = time.perf_counter()
    for index in range(events):
        record.record(
            "console-attached", domain="web1", uuid=f"uuid-{index % 20}", user="alice", detail="w"
        )
    elapsed = time.perf_counter() - started
    record.close()
    return elapsed / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the log line of a console event is not measured here
    memory, stored = [], []
    for _ in range(options.rounds):
        memory.append(microseconds_per_event(None, options.events))
        with tempfile.TemporaryDirectory() as state_dir:
            stored.append(microseconds_per_event(EventStore(state_dir, 100000, 90), options.events))
    print(f"memory only:          {statistics.median(memory):6.1f} us per event")
    print(f"with events.sqlite:   {statistics.median(stored):6.1f} us per event")


if __name__ == "__main__":
    main()
