"""Rotating the audit log while tenants keep the helper busy: files moved away by hand and by
logrotate with the shipped config (logrotate/vpsshell), the helper told with SIGUSR1 or SIGHUP.
Every request of every tenant is in exactly one file, as one whole JSON line; after each
rotation the helper writes to the new file. And ``audit_syslog`` sends the same records to
syslog."""

from __future__ import annotations

import gzip
import json
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import Helper, python_as, run, wait_until
from syslogsink import SyslogSink

TENANTS = ("vpst-alice", "vpst-bob", "vpst-carol", "vpst-mallory")  # mallory: every request denied
SHIPPED_LOGROTATE = Path(__file__).parents[2] / "logrotate" / "vpsshell"

# a tenant asking `list` (allowed or denied, each is one audited request) on one connection
# until the stop file appears; prints how many replies it got and how many were lost
LOAD = r"""
import json, os, sys
from vpsshell.client import HelperClient
from vpsshell.errors import Unavailable, VpsError
path, stop_file = sys.argv[1], sys.argv[2]
client = HelperClient(path)
replies = lost = 0
while not os.path.exists(stop_file):
    try:
        client.call("list", {})
    except Unavailable:
        lost += 1
        client.close()
        continue
    except VpsError:
        pass
    replies += 1
print(json.dumps({"replies": replies, "lost": lost}))
"""


@contextmanager
def tenants_busy(helper: Helper, stop_file: Path) -> Iterator[dict[str, dict[str, int]]]:
    """Every tenant sends requests until the block ends; then what each one counted."""
    clients = {
        user: subprocess.Popen(
            python_as(user, LOAD, str(helper.socket), str(stop_file)),
            stdout=subprocess.PIPE,
            text=True,
        )
        for user in TENANTS
    }
    counts: dict[str, dict[str, int]] = {}
    try:
        yield counts
    finally:
        stop_file.touch()
        try:
            for user, client in clients.items():
                out, _ = client.communicate(timeout=60)
                counts[user] = json.loads(out)
        finally:
            for client in clients.values():
                if client.poll() is None:
                    client.kill()


def lines_of(path: Path) -> int:
    try:
        with path.open("rb") as audit:
            return sum(1 for _ in audit)
    except FileNotFoundError:
        return 0


def rotated_by_hand(helper: Helper, generation: int, signum: signal.Signals) -> None:
    """Move the log away as logrotate does, signal the helper, and wait until it writes to
    the new file."""
    assert helper.process is not None
    wait_until(lambda: lines_of(helper.audit_log) >= 300, 60, "no load on the audit log")
    os.rename(helper.audit_log, f"{helper.audit_log}.{generation}")
    helper.process.send_signal(signum)
    wait_until(lambda: lines_of(helper.audit_log) > 0, 15, f"no new audit log after {signum!r}")


def requests_audited(files: list[Path]) -> dict[int, int]:
    """Tenant requests per uid over ``files``; every line must be one whole JSON record."""
    per_uid: dict[int, int] = {}
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as audit:
            data = audit.read()
        assert data.endswith(b"\n"), f"{path} ends inside a record"
        for line in data.splitlines():
            record = json.loads(line)  # a split or merged record fails here
            if "request_id" in record and record.get("uid") is not None:
                per_uid[record["uid"]] = per_uid.get(record["uid"], 0) + 1
    return per_uid


def assert_every_request_audited_once(counts: dict[str, dict[str, int]], files: list[Path]) -> int:
    audited = requests_audited(files)
    for user, count in counts.items():
        assert count["lost"] == 0, (user, count)
        assert audited.get(pwd.getpwnam(user).pw_uid) == count["replies"], (user, count)
    return sum(count["replies"] for count in counts.values())


def test_rotating_by_hand_under_load_loses_and_splits_no_record(
    helper: Helper, open_dir: Path
) -> None:
    signals = [signal.SIGUSR1, signal.SIGHUP] * 3  # USR1: reopen; HUP: reload and reopen
    with tenants_busy(helper, open_dir / "stop") as counts:
        for generation, signum in enumerate(signals, 1):
            rotated_by_hand(helper, generation, signum)
    files = [helper.audit_log, *(Path(f"{helper.audit_log}.{n}") for n in range(1, 7))]
    total = assert_every_request_audited_once(counts, files)
    assert all(lines_of(path) for path in files)  # every generation got records
    print(f"{total} requests audited across {len(signals)} rotations under load")


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
@pytest.mark.skipif(shutil.which("pkill") is None, reason="pkill (procps) is not installed")
def test_the_shipped_logrotate_config_rotates_under_load(helper: Helper, open_dir: Path) -> None:
    log_dir = helper.audit_log.parent
    config = open_dir / "logrotate.conf"
    config.write_text(
        SHIPPED_LOGROTATE.read_text()
        .replace("/var/log/vpsshell/", f"{log_dir}/")
        .replace("/run/vpsshell/vpsshelld.pid", str(helper.socket.parent / "vpsshelld.pid"))
    )
    state = open_dir / "logrotate.state"
    with tenants_busy(helper, open_dir / "stop") as counts:
        for rotation in range(3):
            wait_until(lambda: lines_of(helper.audit_log) >= 300, 60, "no load on the audit log")
            rotated = subprocess.run(
                ["logrotate", "--force", "--state", str(state), str(config)],
                capture_output=True,
                text=True,
            )
            assert rotated.returncode == 0, rotated.stderr
            # the helper reopened: its records land in the file logrotate created
            wait_until(lambda: lines_of(helper.audit_log) > 0, 15, f"rotation {rotation + 1}")
    assert oct(helper.audit_log.stat().st_mode & 0o777) == "0o640"
    files = [helper.audit_log, Path(f"{helper.audit_log}.1")]
    files += [Path(f"{helper.audit_log}.{n}.gz") for n in (2, 3)]  # compressed a rotation later
    total = assert_every_request_audited_once(counts, files)
    print(f"{total} requests audited across 3 logrotate runs under load")


def test_audit_syslog_sends_each_record_to_syslog_too(open_dir: Path, tenants: None) -> None:
    sink = SyslogSink(open_dir)
    helper = Helper(open_dir / "helper", extra_config="audit_syslog = true")
    helper.start(wrapper=tuple(sink.with_dev_log()))
    try:
        assert run("vpst-alice", helper, "status web1").code == 0
        assert run("vpst-mallory", helper, "start web1").code == 77
        sink.wait_for('"user":"vpst-mallory"')
    finally:
        helper.stop()
        sink.close()
    audited = [line for line in helper.audit_log.read_text().splitlines() if "request_id" in line]
    copied = [(pri, text) for pri, text in sink.messages("vpsshell-audit[") if "request_id" in text]
    assert [text.split(": ", 1)[1] for _, text in copied] == audited  # the same lines, in order
    priorities = {json.loads(text.split(": ", 1)[1])["decision"]: pri for pri, text in copied}
    assert priorities == {"allow": (10 << 3) | 6, "deny": (10 << 3) | 5}  # authpriv info/notice
