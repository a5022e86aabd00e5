"""Hand-written protocol clients that tenants could write, run as those tenants.

The shell never floods, guesses passwords in parallel or pipelines garbage; an attacker's own
client does. These scripts are that client: each is run with ``harness.python_as`` as a real
OS user, talks to the real helper's socket with the real framing (``vpsshell.protocol``) and
prints what it saw as one JSON line, so tests can assert on it.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from harness import python_as

# Opens N connections as fast as the helper's backlog takes them (blocking connect() on many
# threads, as an attacker would) and holds them until stdin closes.
HOLD_CONNECTIONS = r"""
import json, socket, sys, threading
path, count = sys.argv[1], int(sys.argv[2])
held, lock = [], threading.Lock()

def connect(share):
    for _ in range(share):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # blocking: with a timeout Python makes the socket non-blocking, and a full backlog
        # then fails at once instead of waiting its turn
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            continue
        with lock:
            held.append(sock)

threads = [threading.Thread(target=connect, args=(count // 30,)) for _ in range(30)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"held": len(held)}), flush=True)
sys.stdin.readline()
# then: how many of them does the helper serve? a whoami on each
from vpsshell import protocol
answered = 0
for number, sock in enumerate(held):
    try:
        sock.settimeout(10)
        sock.sendall(protocol.encode_message({"v": 1, "id": number + 1, "op": "whoami"}))
    except OSError:
        pass
    reader = protocol.FrameReader()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            frames = reader.feed(data)
            if frames:
                answered += bool(protocol.decode_message(frames[0][1]).get("ok"))
                break
    except OSError:
        pass
print(json.dumps({"answered": answered}), flush=True)
"""

# connect() and close() as fast as possible, COUNT times.
CONNECT_CLOSE_LOOP = r"""
import json, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
done = 0
for _ in range(count):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        done += 1
    except OSError:
        pass
    sock.close()
print(json.dumps({"connected": done}), flush=True)
"""

# THREADS connections, each sending ROUNDS requests (JSON from argv) one after the other and
# reading each reply; prints every reply with the CLOCK_MONOTONIC time it arrived.
PARALLEL_REQUESTS = r"""
import json, socket, sys, threading, time
from vpsshell import protocol
path, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
requests = json.loads(sys.argv[4])
replies, lock = [], threading.Lock()

def read_reply(sock, buffer):
    while True:
        frames = buffer.feed(b"")
        for _, payload in frames:
            message = protocol.decode_message(payload)
            if "progress" not in message:
                return message
        data = sock.recv(65536)
        if not data:
            return None
        for _, payload in buffer.feed(data):
            message = protocol.decode_message(payload)
            if "progress" not in message:
                return message

def worker(number):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    buffer = protocol.FrameReader()
    for index in range(rounds):
        request = dict(requests[(number * rounds + index) % len(requests)])
        request["id"] = number * 1000 + index + 1
        sock.sendall(protocol.encode_message(request))
        reply = read_reply(sock, buffer)
        with lock:
            replies.append({"at": time.monotonic(), "reply": reply})
        if reply is None:
            break
    sock.close()

workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
for thread in workers:
    thread.start()
print(json.dumps({"started": time.monotonic()}), flush=True)
for thread in workers:
    thread.join()
print(json.dumps({"replies": replies}), flush=True)
"""

# One connection writing COUNT copies of a request frame without reading, then closing after
# SECONDS: a pipelined flood.
PIPELINE_FLOOD = r"""
import json, socket, sys, time
from vpsshell import protocol
path, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
frame = protocol.encode_message(json.loads(sys.argv[4]))
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(path)
sock.settimeout(seconds)
sent = 0
deadline = time.monotonic() + seconds
try:
    while sent < count and time.monotonic() < deadline:
        sock.sendall(frame)
        sent += 1
except OSError:
    pass
sock.close()
print(json.dumps({"sent": sent}), flush=True)
"""


def run_script(user: str, script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``script`` as ``user`` to the end; its last line of output as JSON."""
    done = subprocess.run(
        python_as(user, script, *args), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def start_script(user: str, script: str, *args: str) -> subprocess.Popen[str]:
    """Start ``script`` as ``user``; read its output lines as it goes."""
    return subprocess.Popen(
        python_as(user, script, *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def request(op: str, **args: Any) -> dict[str, Any]:
    return {"v": 1, "id": 1, "op": op, "args": args}


# One connection kept open: each line on stdin is a request (JSON); each reply is printed as a
# JSON line. For attacks that need the same connection before and after a change.
ONE_CONNECTION = r"""
import json, socket, sys
from vpsshell import protocol
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
reader, number = protocol.FrameReader(), 0
for line in sys.stdin:
    number += 1
    message = dict(json.loads(line), id=number)
    try:
        sock.sendall(protocol.encode_message(message))
        reply = None
        while reply is None:
            data = sock.recv(65536)
            if not data:
                break
            for _, payload in reader.feed(data):
                decoded = protocol.decode_message(payload)
                if "progress" not in decoded:
                    reply = decoded
    except OSError:
        reply = None
    print(json.dumps({"reply": reply}), flush=True)
"""


class OneConnection:
    """``ONE_CONNECTION`` as ``user``: ``ask(request)`` returns the reply, or None once the
    helper has closed the connection."""

    def __init__(self, user: str, socket_path: str) -> None:
        self.process = start_script(user, ONE_CONNECTION, socket_path)

    def ask(self, message: dict[str, Any]) -> dict[str, Any] | None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())["reply"]
        return None if reply is None else dict(reply)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)
