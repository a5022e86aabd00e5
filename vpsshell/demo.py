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

USAGE = "usage: vpsshell-demo [-c COMMAND]"
ABOUT = """\
Starts a private vpsshell helper on a simulated host (no root, no hypervisor) and opens
vpsshell against it: you own web1, web2 and db1; billing belongs to somebody else.
With -c it runs one COMMAND instead (vpsshell-demo -c 'list'). Everything it started and
wrote is removed when it exits."""

DOMAINS = (("web1", 1, 512, 3), ("web2", 2, 1024, 3), ("db1", 2, 2048, 5), ("billing", 4, 4096, 3))


def _write_files(root: str, user: str) -> str:
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
            '\n[backend]\ntype = "sim"\nhost = "demo"\n'
        )
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(USAGE + "\n\n" + ABOUT)
        return 0
    if args not in ([],) and not (len(args) == 2 and args[0] == "-c"):
        print(f"{USAGE}\n(vpsshell-demo --help says more)", file=sys.stderr)
        return 64
    root = tempfile.mkdtemp(prefix="vpsshell-demo-")
    helper: subprocess.Popen[bytes] | None = None
    try:
        config = _write_files(root, getpass.getuser())
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
        if helper is not None and helper.poll() is None:
            helper.send_signal(signal.SIGTERM)
            try:
                helper.wait(10)
            except subprocess.TimeoutExpired:
                helper.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
