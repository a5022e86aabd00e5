"""Console recordings as real tenants and a real admin on the sim backend: a console recorded
while anyone is attached (writer and watchers: one stream) as asciicast v2 with output, the
writer's input, resizes and markers of who attached, took over and detached;
``recordings``/``recording`` for the domain's tenants only; ``vpsshell-admin recordings
list|export``; the export plays in ``asciinema play``; the limits on size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pexpect
import pytest
from harness import (
    BIN,
    DEFAULT_POLICY,
    Helper,
    console_as,
    run,
    start_and_wait,
    vpsshell_admin,
    wait_until,
)
from test_console import PROMPT, login

VIEWER_POLICY = DEFAULT_POLICY + "allow user:vpst-bob @viewer web1\n"


def recordings(helper: Helper, user: str = "vpst-alice", domain: str = "web1") -> list[Any]:
    result = run(user, helper, f"recordings {domain} --json")
    assert result.code == 0, result
    found: list[Any] = result.json()["recordings"]
    return found


def fetch(helper: Helper, user: str, rec_id: str) -> tuple[int, bytes, str]:
    """``vpsshell -c 'recording ID'`` as ``user``: exit code, stdout as bytes, stderr."""
    proc = subprocess.run(
        ["runuser", "-u", user, "--", "env", f"VPSSHELL_SOCKET={helper.socket}"]
        + [str(BIN / "vpsshell"), "-c", f"recording {rec_id}"],
        capture_output=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr.decode()


def cast_events(data: bytes) -> tuple[dict[str, Any], list[list[Any]]]:
    lines = data.decode("ascii").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def finished(helper: Helper, count: int, user: str = "vpst-alice") -> list[Any]:
    """Once web1 has ``count`` recordings and none still going, all of them (oldest first)."""
    wait_until(
        lambda: [r["active"] for r in recordings(helper, user)] == [False] * count,
        10,
        f"{count} finished recording(s)",
    )
    return recordings(helper, user)


def test_a_session_is_recorded_and_plays_in_asciinema(helper: Helper, open_dir: Path) -> None:
    start_and_wait(helper, "vpst-alice", "web1")
    session = console_as(helper, "vpst-alice", "web1")
    session.setwinsize(30, 100)
    login(session)
    session.send("echo recorded-42\r")
    session.expect("recorded-42")
    session.expect(PROMPT)
    session.setwinsize(40, 120)  # the shell gets SIGWINCH and tells the helper
    session.send("\r")
    session.expect(PROMPT)
    session.send("\x1d")
    session.expect("detached")
    session.wait()

    (listed,) = finished(helper, 1)
    assert (listed["users"], listed["domain"]) == (["vpst-alice"], "web1")
    assert listed["bytes"] > 0 and listed["seconds"] >= 0

    code, cast, err = fetch(helper, "vpst-alice", listed["id"])
    assert code == 0, err
    header, events = cast_events(cast)
    assert (header["version"], header["width"], header["height"]) == (2, 100, 30)
    output = "".join(e[2] for e in events if e[1] == "o")
    typed = "".join(e[2] for e in events if e[1] == "i")
    assert "recorded-42" in output  # what the guest printed
    assert "echo recorded-42" in typed  # what the writer typed
    assert ["r", "120x40"] in [e[1:] for e in events]
    markers = [e[2] for e in events if e[1] == "m"]
    assert markers[0] == "vpst-alice attached (write)"
    assert markers[-2:] == ["vpst-alice detached (write): detached", "recording ended: detached"]
    times = [e[0] for e in events]
    assert times == sorted(times)

    # the admin's export is the same file, found by the admin's list
    listing = vpsshell_admin(helper, "recordings", "list")
    assert listing.code == 0, listing
    assert listed["id"] in listing.out
    exported = subprocess.run(
        [str(BIN / "vpsshell-admin"), "--config", str(helper.config)]
        + ["recordings", "export", listed["id"]],
        capture_output=True,
        timeout=30,
    )
    assert exported.returncode == 0 and exported.stdout == cast

    if shutil.which("asciinema") is None:
        pytest.skip("asciinema (Debian package asciinema) is not installed")
    path = open_dir / "session.cast"
    path.write_bytes(cast)
    player = pexpect.spawn("asciinema", ["play", "-s", "20", str(path)], timeout=30)
    player.expect("recorded-42")
    player.expect(pexpect.EOF)
    player.close()
    assert player.exitstatus == 0


def test_one_recording_holds_writer_watcher_and_takeover(open_dir: Path) -> None:
    helper = Helper(open_dir / "helper", policy=VIEWER_POLICY).start()
    try:
        start_and_wait(helper, "vpst-alice", "web1")
        writer = console_as(helper, "vpst-alice", "web1")
        login(writer)
        watcher = console_as(helper, "vpst-bob", "web1", "--watch")
        watcher.expect("Watching")
        watcher.send("\rtyped-by-the-watcher\r")
        writer.send("echo seen-by-both\r")
        watcher.expect("seen-by-both")
        taker = console_as(helper, "vpst-alice", "web1", "--takeover")
        taker.expect("Connected to")
        writer.expect("taken over")
        writer.wait()
        for session in (taker, watcher):
            session.send("\x1d")
            session.expect("detached")
            session.wait()

        (listed,) = finished(helper, 1)  # one stream, one recording, for all three sessions
        assert listed["users"] == ["vpst-alice", "vpst-bob"]
        code, cast, err = fetch(helper, "vpst-bob", listed["id"])  # bob may: log on web1
        assert code == 0, err
        _, events = cast_events(cast)
        markers = [e[2] for e in events if e[1] == "m"]
        assert markers[:4] == [
            "vpst-alice attached (write)",
            "vpst-bob attached (watch)",
            "vpst-alice detached (write): takeover",
            "vpst-alice took over (write)",
        ]
        assert markers[-1].startswith("recording ended: ")
        assert "seen-by-both" in "".join(e[2] for e in events if e[1] == "o")
        typed = "".join(e[2] for e in events if e[1] == "i")
        assert "echo seen-by-both" in typed  # the writer's keys, and no watcher's
        assert "typed-by-the-watcher" not in cast.decode()
    finally:
        helper.stop()


def test_input_recording_can_be_turned_off(open_dir: Path) -> None:
    helper = Helper(open_dir / "helper", extra_config="console_record_input = false").start()
    try:
        start_and_wait(helper, "vpst-alice", "web1")
        session = console_as(helper, "vpst-alice", "web1")
        login(session)  # the password typed here must not be kept
        session.send("\x1d")
        session.wait()
        (listed,) = finished(helper, 1)
        _, events = cast_events(fetch(helper, "vpst-alice", listed["id"])[1])
        assert [e for e in events if e[1] == "o"]
        assert not [e for e in events if e[1] == "i"]
    finally:
        helper.stop()


def test_only_the_domains_tenants_see_its_recordings(helper: Helper) -> None:
    start_and_wait(helper, "vpst-alice", "web1")
    session = console_as(helper, "vpst-alice", "web1", "--no-replay")
    session.expect("Press Ctrl-]")
    session.send("\x1d")
    session.wait()
    (listed,) = finished(helper, 1)

    refused = fetch(helper, "vpst-bob", listed["id"])
    missing = fetch(helper, "vpst-bob", "20200101-000000-abcdef")
    assert refused[0] == missing[0] == 77
    # the same words for a recording that is not yours and one that does not exist
    assert refused[2].replace(listed["id"], "ID") == missing[2].replace(
        "20200101-000000-abcdef", "ID"
    )
    assert run("vpst-bob", helper, "recordings web1").code == 77
    assert run("vpst-alice", helper, "recording ../../etc/passwd").code == 64
    denial = [a for a in helper.audit() if a["action"] == "recording" and a["decision"] == "deny"]
    assert denial and denial[0]["recording"] == listed["id"] and denial[0]["domain"] == "web1"


def test_recordings_stay_within_their_limits_oldest_removed_first(open_dir: Path) -> None:
    helper = Helper(
        open_dir / "helper",
        extra_limits="console_recording_bytes = 3000\nconsole_recordings_bytes_per_domain = 4000",
    ).start()
    try:
        start_and_wait(helper, "vpst-alice", "web1")
        ids: list[str] = []
        for round_ in range(4):
            session = console_as(helper, "vpst-alice", "web1", "--no-replay")
            if round_ == 0:
                login(session)  # the guest stays logged in for the later sessions
            else:
                session.expect("Press Ctrl-] to detach")
            # the line typed, its echo and the output: 3600 bytes to record
            session.send(f"echo round-{round_}-{'x' * 1200}-end\r")
            session.expect(PROMPT)
            session.send("\x1d")
            session.wait()
            wait_until(
                lambda: not any(r["active"] for r in recordings(helper)), 10, "session ended"
            )
            ids.append(recordings(helper)[-1]["id"])
        kept = [r["id"] for r in recordings(helper)]
        directory = helper.root / "recordings"
        sizes = {p.name: p.stat().st_size for p in directory.iterdir()}
        streams = {name: size for name, size in sizes.items() if name.endswith(".rec")}
        # each one stopped at its own limit, with a word why
        assert all(size <= 3000 for size in streams.values()), sizes
        _, events = cast_events(fetch(helper, "vpst-alice", ids[-1])[1])
        assert ["m", "recording stopped: it reached its size limit"] in [e[1:] for e in events]
        # the domain's share holds: the oldest went, the newest stayed
        assert sum(streams.values()) <= 4000
        assert kept == [i for i in ids if i in kept] and ids[-1] in kept and ids[0] not in kept
        assert sorted(f"{i}.rec" for i in kept) == sorted(streams)
        assert sorted(f"{i}.json" for i in kept) == sorted(set(sizes) - set(streams))
        # and the helper knows them after a restart
        helper.stop()
        helper.start()
        assert [r["id"] for r in recordings(helper)] == kept
        assert os.stat(directory).st_mode & 0o777 == 0o750
    finally:
        helper.stop()
