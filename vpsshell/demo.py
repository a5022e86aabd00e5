"""``vpsshell-demo``: try vpsshell without root, without a hypervisor, in one command.

It starts a private ``vpsshelld`` on the sim backend in a temporary directory, with a policy
that gives the invoking user three domains and leaves a fourth to somebody else, then opens
``vpsshell`` against it (``vpsshell-demo -c 'list'`` runs one command). Everything it started
and wrote is removed on exit.
"""

from __future__ import annotations

import contextlib
import getpass
import grp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from vpsshell import paths

USAGE = "usage: vpsshell-demo [--web] [-c COMMAND]"
ABOUT = """\
Starts a private vpsshell helper on a simulated host (no root, no hypervisor) and opens
vpsshell against it: you own web1, web2 and db1; billing belongs to somebody else.
With -c it runs one COMMAND instead (vpsshell-demo -c 'list'). With --web it also starts the
web console on https://localhost (a self-signed certificate; xterm.js from the npm registry
the first time) and prints a one-time link to web1's console; webconsole DOMAIN in the shell
makes more. Everything it started and wrote is removed when it exits."""

DOMAINS = (("web1", 1, 512, 3), ("web2", 2, 1024, 3), ("db1", 2, 2048, 5), ("billing", 4, 4096, 3))


def _write_files(root: str, user: str, web_port: int | None = None) -> str:
    policy_dir = os.path.join(root, "policy.d")
    os.mkdir(policy_dir, 0o755)
    with open(os.path.join(policy_dir, "10-demo.policy"), "w") as fh:
        fh.write(
            "# the demo tenant owns three domains; billing belongs to somebody else\n"
            f"allow user:{user} @operator web1 web2 db1\n"
            f"allow user:{user} sysrq web1 web2 db1\n"
            "allow user:someone-else @all billing\n"
        )
    group = grp.getgrgid(os.getgid()).gr_name
    config = os.path.join(root, "vpsshelld.toml")
    with open(config, "w") as fh:
        fh.write(
            f'socket = "{root}/vpsshelld.sock"\n'
            f'socket_group = "{group}"\n'
            f'admin_socket = "{root}/admin.sock"\n'
            f'policy_dir = "{policy_dir}"\n'
            f'audit_log = "{root}/audit.jsonl"\n'
            f'state_dir = "{root}/state"\n'
            f'console_log_dir = "{root}/console"\n'
            f'hooks_dir = "{root}/hooks.d"\n'
            'pam_service = ""\n'  # an unprivileged helper cannot check other accounts
            # the tenant's keys and second factor stay in the demo, whoever runs it
            f'authorized_keys_dir = "{root}/authorized_keys"\n'
            f'totp_users_file = "{root}/totp/users.oath"\n'
        )
        if web_port is not None:  # the web service runs as the demo's user too
            fh.write(
                f'web_socket = "{root}/web.sock"\n'
                f'web_socket_user = "{user}"\n'
                f'web_url = "https://localhost:{web_port}/"\n'
            )
        else:  # no web service runs: links would lead nowhere
            fh.write("web_console = false\n")
        fh.write('\n[backend]\ntype = "sim"\nhost = "demo"\n')
        for name, vcpus, memory, boot in DOMAINS:
            fh.write(
                f'\n[[backend.domains]]\nname = "{name}"\nvcpus = {vcpus}\n'
                f"memory_mib = {memory}\nboot_seconds = {boot}\n"
            )
    return config


def _wait_for_socket(path: str, helper: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if helper.poll() is not None:
            return False
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return True
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    return False


def _free_port(preferred: int = paths.WEB_PORT) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free port")


def _start_web(root: str, port: int) -> subprocess.Popen[bytes]:
    """vpsshell-web on localhost:``port`` with a self-signed pair, in front of the demo helper;
    xterm.js from the installed assets, else fetched once (checked) into the user's cache."""
    from vpsshell.web.assets import fetch_assets, missing_assets
    from vpsshell.web.config import ASSETS_DIR
    from vpsshell.web.main import make_self_signed

    assets = ASSETS_DIR
    if missing_assets(assets):
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        assets = os.path.join(cache, "vpsshell-web")
        if missing_assets(assets):
            print("vpsshell demo: fetching xterm.js from the npm registry...", flush=True)
            fetch_assets(assets)
    cert, key = os.path.join(root, "web-cert.pem"), os.path.join(root, "web-key.pem")
    make_self_signed(cert, key, "localhost")
    config = os.path.join(root, "web.toml")
    with open(config, "w") as fh:
        fh.write(
            f'listen = "127.0.0.1"\nport = {port}\ntls_certificate = "{cert}"\n'
            f'tls_key = "{key}"\nhelper_socket = "{root}/web.sock"\n'
            f'public_url = "https://localhost:{port}/"\nassets_dir = "{assets}"\n'
        )
    with open(os.path.join(root, "web.log"), "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-I", "-m", "vpsshell.web.main", "--config", config],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _first_link(sock: str) -> str:
    """web1 started, and a one-time link to its console, asked for as the demo's tenant."""
    from vpsshell.client import HelperClient

    client = HelperClient(sock)
    try:
        if client.call("status", {"domain": "web1"})["state"] == "shutoff":
            client.call("start", {"domain": "web1"})
        return str(client.call("webconsole", {"domain": "web1"})["url"])
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(USAGE + "\n\n" + ABOUT)
        return 0
    web = args[:1] == ["--web"]
    args = args[1:] if web else args
    if args not in ([],) and not (len(args) == 2 and args[0] == "-c"):
        print(f"{USAGE}\n(vpsshell-demo --help says more)", file=sys.stderr)
        return 64
    if web and os.geteuid() == 0:
        print(
            "vpsshell-demo: --web runs as an ordinary user (vpsshell-web never runs as root)",
            file=sys.stderr,
        )
        return 64
    root = tempfile.mkdtemp(prefix="vpsshell-demo-")
    helper: subprocess.Popen[bytes] | None = None
    web_service: subprocess.Popen[bytes] | None = None
    try:
        web_port = _free_port() if web else None
        config = _write_files(root, getpass.getuser(), web_port)
        with open(os.path.join(root, "helper.log"), "wb") as log:
            helper = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-m",
                    "vpsshell.daemon.main",
                    "--config",
                    config,
                    "--foreground",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        sock = os.path.join(root, "vpsshelld.sock")
        if not _wait_for_socket(sock, helper, 15):
            with open(os.path.join(root, "helper.log")) as fh:
                sys.stderr.write(fh.read()[-2000:])
            print("vpsshell-demo: the demo helper did not start", file=sys.stderr)
            return 69
        if web_port is not None:
            web_service = _start_web(root, web_port)
            if not _wait_for_port(web_port, web_service, 15):
                with open(os.path.join(root, "web.log")) as fh:
                    sys.stderr.write(fh.read()[-2000:])
                print("vpsshell-demo: the web console did not start", file=sys.stderr)
                return 69
            print(
                f"vpsshell demo: web console on https://localhost:{web_port}/ (self-signed "
                "certificate: your browser warns once).\n"
                f"Open web1's console (within 60 s, once): {_first_link(sock)}\n",
                flush=True,
            )
        if not args:
            print(
                "vpsshell demo: a private helper with a simulated host is running.\n"
                "You own web1, web2 and db1; billing belongs to someone else.\n"
                "Try: list, start web1, status web1, help. Leave with exit or Ctrl-D.\n",
                flush=True,  # before the shell's output, also on a pipe
            )
        env = dict(os.environ, VPSSHELL_SOCKET=sock)
        with contextlib.suppress(KeyboardInterrupt):
            return subprocess.call(
                [sys.executable, "-I", "-m", "vpsshell.shell.launch", *args], env=env
            )
        return 130
    finally:
        _stop(web_service)
        _stop(helper)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
