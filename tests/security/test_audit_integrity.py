"""The audit log under attack: floods must not grow it without bound, a full file system must
not let actions go unaudited, and a record cut short must never merge with the next one."""

from __future__ import annotations

import errno
import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Helper, run, start_and_wait, state_of
from rawclient import PIPELINE_FLOOD, request, run_script

pytestmark = pytest.mark.root


def records_of(helper: Helper, user: str) -> list[dict[str, object]]:
    uid = pwd.getpwnam(user).pw_uid
    return [r for r in helper.audit() if r.get("uid") == uid]


def test_a_pipelined_flood_of_unknown_ops_is_rate_limited_and_folded(
    open_dir: Path, tenants: None
) -> None:
    helper = Helper(open_dir / "helper", requests_per_minute=600).start()  # the shipped limit
    try:
        garbage = json.dumps(request("no-such-op"))
        flood = run_script("vpst-carol", PIPELINE_FLOOD, str(helper.socket), "50000", "3", garbage)
        assert flood["sent"] > 1000
        assert run("vpst-alice", helper, "whoami").code == 0
    finally:
        helper.stop()  # ends the fold windows: their counts are written
    records = records_of(helper, "vpst-carol")
    # a quarter minute's burst is answered one by one, the rest is folded
    assert len(records) <= 300, f"{len(records)} audit records for one flooding connection"
    assert any(r.get("decision") == "rate-limited" and r.get("repeated") for r in records)


@pytest.fixture
def small_fs(open_dir: Path) -> Iterator[Path]:
    mount = open_dir / "auditfs"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=755", "tmpfs", str(mount)], check=True
    )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full, to the last byte."""
    with open(path, "wb", buffering=0) as filler:
        for size in (65536, 1):
            try:
                while True:
                    filler.write(b"x" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def test_a_full_audit_file_system_refuses_actions_and_never_merges_records(
    open_dir: Path, tenants: None, small_fs: Path
) -> None:
    helper = Helper(open_dir / "helper")
    config = helper.config.read_text().replace(
        f'audit_log = "{helper.audit_log}"', f'audit_log = "{small_fs / "audit.jsonl"}"'
    )
    helper.config.write_text(config)
    helper.audit_log = small_fs / "audit.jsonl"
    helper.start()
    try:
        start_and_wait(helper, "vpst-alice", "web1")
        fill(small_fs / "filler")
        refused = run("vpst-alice", helper, "poweroff web1")
        assert refused.code == 75 and "audit log" in refused.err, refused
        # reading goes on: its records fill what is left, the last one cut short
        for _ in range(20):
            assert run("vpst-alice", helper, "list").code == 0
        assert "cannot write the audit log" in helper.log.read_text()
        os.unlink(small_fs / "filler")
        assert state_of(helper, "vpst-alice", "web1") == "running"
        assert run("vpst-alice", helper, "poweroff web1").code == 0
    finally:
        helper.stop()
    lines = helper.audit_log.read_text().splitlines()
    broken = []
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            broken.append(line)
    assert len(broken) <= 1, broken  # at most the one record the full disk cut short
    last_poweroff = [json.loads(line) for line in lines if '"action":"poweroff"' in line][-1]
    assert last_poweroff["result"] == "ok"


def test_records_written_into_a_full_file_system_never_merge(small_fs: Path) -> None:
    from vpsshell.daemon.audit import AuditLog

    audit = AuditLog(str(small_fs / "audit.jsonl"))
    audit.open()
    fill(small_fs / "filler")
    written = 0
    while audit.write(action="list", padding="p" * 100, number=written):
        written += 1
    assert not audit.writable()  # now a partial record ends the file
    os.unlink(small_fs / "filler")
    assert audit.write(action="poweroff", number=-1)
    assert audit.writable()
    audit.close()
    lines = (small_fs / "audit.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["action"] == "poweroff"
    whole = [json.loads(line) for line in lines[:-1] if line.endswith("}")]
    assert [r["number"] for r in whole] == list(range(written))
    assert len(lines) - 1 - len(whole) <= 1  # the one record the full disk cut short
