"""The helper survives hostile clients, enforces its limits, and audits every request."""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

from harness import Helper, python_as, run, start_and_wait, wait_until

from vpsshell import protocol
from vpsshell.shell.outcome import INTERRUPTED


def connect(helper: Helper) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(helper.socket))
    return sock


def still_serving(helper: Helper) -> None:
    result = run("vpst-alice", helper, "list --json")
    assert result.code == 0, result
    assert helper.process is not None and helper.process.poll() is None


def closed_by_peer(sock: socket.socket) -> bool:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return True


def test_garbage_is_dropped_and_audited(helper: Helper) -> None:
    sock = connect(helper)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
    assert closed_by_peer(sock)
    sock.close()
    still_serving(helper)
    assert any(line["action"] == "protocol" for line in helper.audit())


def test_oversized_frame_is_refused(helper: Helper) -> None:
    sock = connect(helper)
    sock.sendall(struct.pack(">BI", protocol.FRAME_MESSAGE, 512 * 1024 * 1024))
    reply = sock.recv(65536)
    assert b"exceeds" in reply
    sock.close()
    still_serving(helper)


def test_disconnect_mid_request(helper: Helper) -> None:
    frame = protocol.encode_message(protocol.request(1, "list", {}))
    for cut in (3, len(frame) - 2):
        sock = connect(helper)
        sock.sendall(frame[:cut])
        sock.close()
    # and a client that leaves while its shutdown --wait is running
    run("vpst-alice", helper, "start web2")
    wait_until(
        lambda: run("vpst-alice", helper, "status web2 --json").json()["state"] == "running",
        10,
        "web2 running",
    )
    leave_early = (
        "import socket, sys; from vpsshell import protocol; "
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "s.sendall(protocol.encode_message("
        "protocol.request(1, 'shutdown', {'domain': 'web2', 'wait': 30}))); s.close()"
    )
    subprocess.run(
        python_as("vpst-alice", leave_early, str(helper.socket)),
        check=True,
    )
    wait_until(
        lambda: run("vpst-alice", helper, "status web2 --json").json()["state"] == "shutoff",
        15,
        "web2 shut off after the client left",
    )
    still_serving(helper)


def test_hand_written_client_gets_no_more_than_the_shell(helper: Helper) -> None:
    """Root is a caller like any other: it owns nothing in the policy."""
    sock = connect(helper)
    for request_id, (op, args) in enumerate(
        [
            ("start", {"domain": "web1", "user": "vpst-alice", "uid": 1000}),
            ("start", {"domain": "../../etc/passwd"}),
            ("start", {"domain": ["web1"]}),
            ("shutdown", {"domain": "web1", "wait": 10**9}),
            ("nosuchop", {}),
        ],
        start=1,
    ):
        sock.sendall(protocol.encode_message(protocol.request(request_id, op, args)))
        header = sock.recv(protocol.HEADER.size)
        _, length = protocol.parse_header(header)
        payload = b""
        while len(payload) < length:
            payload += sock.recv(length - len(payload))
        reply = protocol.decode_message(payload)
        assert reply["ok"] is False, (op, args, reply)
        assert reply["error"]["kind"] in ("denied", "usage"), reply
    sock.close()
    assert run("vpst-alice", helper, "status web1 --json").json()["state"] == "shutoff"


def test_connection_cap_per_user(helper: Helper) -> None:
    socks = []
    for _ in range(16):  # one at a time, each accepted and counted before the next
        sock = connect(helper)
        sock.sendall(protocol.encode_message(protocol.request(1, "whoami", {})))
        assert b'"ok":true' in sock.recv(65536)
        socks.append(sock)
    extra = connect(helper)
    assert b"too many open sessions" in extra.recv(65536)
    extra.close()
    still_serving(helper)  # another user is unaffected
    for sock in socks:
        sock.close()


def test_every_request_is_audited(helper: Helper) -> None:
    run("vpst-alice", helper, "start web1")
    run("vpst-bob", helper, "start web1")
    run("vpst-mallory", helper, "status db1")
    run("vpst-alice", helper, "list")
    lines = helper.audit()
    by_user = {(line.get("user"), line.get("action"), line.get("decision")) for line in lines}
    assert ("vpst-alice", "start", "allow") in by_user
    assert ("vpst-bob", "start", "deny") in by_user
    assert ("vpst-mallory", "status", "deny") in by_user
    assert ("vpst-alice", "list", "allow") in by_user
    start = next(
        line for line in lines if line.get("user") == "vpst-alice" and line["action"] == "start"
    )
    assert start["rule"] == "10-tenants.policy:2"
    assert start["result"] == "ok" and start["domain"] == "web1"
    for key in ("time", "request_id", "uid", "pid", "duration_ms"):
        assert key in start
    mallory = next(line for line in lines if line.get("user") == "vpst-mallory")
    assert mallory["rule"] == "10-tenants.policy:5" and mallory["reason"] == "suspended"


def test_rate_limit_gives_75_and_other_users_are_unaffected(open_dir: Path, tenants: None) -> None:
    limited = Helper(open_dir / "limited", requests_per_minute=60).start()
    try:
        sock = connect(limited)
        kinds = []
        for request_id in range(1, 40):
            sock.sendall(protocol.encode_message(protocol.request(request_id, "whoami", {})))
            _, length = protocol.parse_header(sock.recv(protocol.HEADER.size))
            reply = protocol.decode_message(sock.recv(length))
            kinds.append(reply["ok"] or reply["error"]["kind"])
        sock.close()
        assert kinds[0] is True and "temporary" in kinds
        result = run("vpst-alice", limited, "whoami")
        assert result.code == 0, result
        assert run("vpst-alice", limited, "list").code == 0
    finally:
        limited.stop()


def test_client_leaving_a_long_wait_is_audited_as_cancelled(helper: Helper) -> None:
    start_and_wait(helper, "vpst-alice", "stubborn")  # takes 600 s to shut down
    waiting = subprocess.Popen(
        python_as(
            "vpst-alice",
            "import socket, sys\n"
            "from vpsshell import protocol\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "s.sendall(protocol.encode_message(protocol.request(\n"
            "    1, 'shutdown', {'domain': 'stubborn', 'wait': 60})))\n"
            "s.recv(1)\n",  # returns with the first progress message, then the client is gone
            str(helper.socket),
        )
    )
    assert waiting.wait(30) == 0
    cancelled = wait_until(
        lambda: [e for e in helper.audit() if e["action"] == "shutdown"], 20, "audited"
    )
    assert cancelled[-1]["result"] == "cancelled"
    assert run("vpst-alice", helper, "poweroff stubborn").code == 0  # lock released


def test_ctrl_c_during_a_wait_exits_130_without_a_traceback(helper: Helper) -> None:
    """``ssh -t host 'shutdown stubborn --wait=60'`` and Ctrl-C: one line, exit 130; the
    shutdown that was asked for goes on."""
    import os
    import pwd
    import signal

    from harness import BIN

    start_and_wait(helper, "vpst-alice", "stubborn")  # takes 600 s to shut down
    account = pwd.getpwnam("vpst-alice")
    waiting = subprocess.Popen(
        [str(BIN / "vpsshell"), "-c", "shutdown stubborn --wait=60"],
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=os.getgrouplist(account.pw_name, account.pw_gid),
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "VPSSHELL_SOCKET": str(helper.socket)},
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: (
            run("vpst-alice", helper, "status stubborn --json").json()["state"] == "shutting-down"
        ),
        20,
        "the shutdown requested",
    )
    waiting.send_signal(signal.SIGINT)
    out, err = waiting.communicate(timeout=20)
    assert waiting.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == f"vpsshell: {INTERRUPTED}", err
    assert "Traceback" not in err
    assert run("vpst-alice", helper, "status stubborn --json").json()["state"] == "shutting-down"
    wait_until(lambda: [e for e in helper.audit() if e.get("result") == "cancelled"], 20, "audited")
    assert run("vpst-alice", helper, "poweroff stubborn").code == 0
