"""What vpsshell-web and the helper's web socket refuse, seen from outside with plain clients (no
browser): headers, static files, the WebSocket's origin, plain HTTP, the per-address limit, a
tenant on the web socket, and the service started as root."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import BIN, python_as, wait_until
from website import WebConsole

pytestmark = pytest.mark.root


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def fetch(url: str, **headers: str) -> tuple[int, Any, str]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=tls_context(), headers=headers) as response,
    ):
        return response.status, response.headers, await response.text()


async def websocket_status(url: str, origin: str | None) -> int:
    import aiohttp

    headers = {"Origin": origin} if origin is not None else {}
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url + "ws", ssl=tls_context(), headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


def test_the_page_has_no_inline_script_a_strict_policy_and_no_cookie(web: WebConsole) -> None:
    status, headers, body = asyncio.run(fetch(web.url))
    assert status == 200
    policy = headers["Content-Security-Policy"]
    script_src = re.search(r"script-src ([^;]*)", policy)
    assert script_src and script_src.group(1).strip() == "'self'"
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store" and "Set-Cookie" not in headers
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", body, re.S)
    assert scripts and all('src="/' in attributes and not code for attributes, code in scripts)
    assert "on" not in {m.lower()[:2] for m in re.findall(r"\s(on\w+)=", body)}


@pytest.mark.parametrize(
    "path", ["/xterm/..%2f..%2fweb.toml", "/xterm/versions.json", "/console/index.html", "/etc"]
)
def test_only_the_pages_own_files_are_served(web: WebConsole, path: str) -> None:
    status, headers, _ = asyncio.run(fetch(web.url.rstrip("/") + path))
    assert status == 404 and "Content-Security-Policy" in headers
    assert asyncio.run(fetch(web.url + "xterm/LICENSE.xterm"))[0] == 200  # the licence is


def test_the_websocket_is_accepted_only_from_the_pages_origin(web: WebConsole) -> None:
    assert asyncio.run(websocket_status(web.url, "https://evil.example")) == 403
    assert asyncio.run(websocket_status(web.url, None)) == 403
    assert asyncio.run(websocket_status(web.url, web.url.rstrip("/"))) == 101


def test_plain_http_gets_no_page(web: WebConsole) -> None:
    with socket.create_connection(("127.0.0.1", web.port), timeout=5) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            answer = plain.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert b"<html" not in answer and b"200 OK" not in answer


def test_one_address_may_try_only_so_many_links(web: WebConsole) -> None:
    origin = web.url.rstrip("/")
    statuses = [asyncio.run(websocket_status(web.url, origin)) for _ in range(22)]
    assert statuses[:20] == [101] * 20 and statuses[20:] == [403, 403]


def test_a_tenant_is_turned_away_from_the_helpers_web_socket(web: WebConsole) -> None:
    web_socket = web.helper.root / "run" / "web.sock"
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('EACCES')\n"
        "else:\n    print('connected', s.recv(4096))\n"
    )
    done = subprocess.run(python_as("vpst-alice", script, str(web_socket)), capture_output=True)
    assert done.stdout.strip() == b"EACCES", done  # the socket's mode keeps tenants out...
    web_socket.chmod(0o666)
    done = subprocess.run(python_as("vpst-alice", script, str(web_socket)), capture_output=True)
    assert done.stdout.startswith(b"connected"), done  # ...and so does the helper, if opened
    wait_until(
        lambda: any(
            r.get("socket") == "web" and r.get("message") == "not the web service"
            for r in web.helper.audit()
        ),
        10,
        "the refusal's audit line",
    )


def test_the_service_refuses_to_serve_as_root(web: WebConsole) -> None:
    done = subprocess.run(
        [str(BIN / "python"), "-I", "-m", "vpsshell.web.main", "--config", str(web.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 64 and "refusing to serve as root" in done.stderr


def test_a_host_without_a_web_console_says_so(open_dir: Path, tenants: None) -> None:
    from harness import Helper, run

    helper = Helper(open_dir / "helper", extra_config="web_console = false").start()
    try:
        done = run("vpst-alice", helper, "webconsole web1")
        assert done.code == 1 and "web console is not set up" in done.err, done
        assert not (helper.root / "run" / "web.sock").exists()
    finally:
        helper.stop()


def test_by_default_a_link_points_at_this_hosts_web_console(helper: Any) -> None:
    from harness import run

    done = run("vpst-alice", helper, "webconsole web1 --json")
    assert done.code == 0, done
    assert done.json()["url"].startswith(f"https://{socket.getfqdn()}:8443/#")
    assert (helper.root / "run" / "web.sock").is_socket()
