"""``vpsshell-web``: the browser console service, and its install-time helpers.

    vpsshell-web [--config FILE] [--check-config]     serve (HTTPS + WebSocket)
    vpsshell-web fetch-assets [--dir DIR] [--from DIR] install the pinned xterm.js (npm registry)
    vpsshell-web self-signed --cert FILE --key FILE [--name HOST] [--owner USER]

It runs as its own unprivileged user (``vpsshell-web``), never as root: it refuses to serve as
uid 0. It needs its TLS pair, the assets and the helper's web socket, nothing else. One place for
exit statuses: 0 served or done, 64 usage or config error, 69 something it needs is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pwd
import signal
import ssl
import subprocess
import sys

from vpsshell import __version__
from vpsshell.web.config import WEB_CONFIG, WebConfig, WebConfigError, load_web_config

log = logging.getLogger("vpsshell.web")

EXIT_OK, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 64, 69


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpsshell-web",
        description="vpsshell's browser console: HTTPS, one-time console links, xterm.js",
        epilog="See vpsshell-web(8).",
    )
    parser.add_argument("--config", default=WEB_CONFIG, metavar="FILE", help=f"({WEB_CONFIG})")
    parser.add_argument(
        "--check-config", action="store_true", help="validate the config and files, then exit"
    )
    parser.add_argument("--version", action="version", version=f"vpsshell-web {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fetch = sub.add_parser(
        "fetch-assets", help="install the pinned xterm.js from the npm registry, checked"
    )
    fetch.add_argument("--dir", metavar="DIR", help="where (default: the config's assets_dir)")
    fetch.add_argument(
        "--from",
        dest="tarball_dir",
        metavar="DIR",
        help="take the npm tarballs from DIR (npm pack) instead of the registry",
    )
    cert = sub.add_parser("self-signed", help="make a self-signed TLS pair (demo, tests)")
    cert.add_argument("--cert", required=True, metavar="FILE")
    cert.add_argument("--key", required=True, metavar="FILE")
    cert.add_argument("--name", default="localhost", metavar="HOST", help="(localhost)")
    cert.add_argument("--owner", metavar="USER", help="the user the key is made readable by")
    return parser


def make_self_signed(cert: str, key: str, name: str, owner: str | None = None) -> None:
    """A self-signed certificate for ``name`` (and 127.0.0.1, ::1), valid 30 days, with its
    key (mode 0600, owned by ``owner``), made by openssl."""
    old_umask = os.umask(0o077)
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            + ["-nodes", "-days", "30", "-subj", f"/CN={name}", "-keyout", key, "-out", cert]
            + ["-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1,IP:::1"],
            check=True,
            capture_output=True,
        )
    finally:
        os.umask(old_umask)
    os.chmod(cert, 0o644)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(key, entry.pw_uid, entry.pw_gid)


def tls_context(config: WebConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_certificate, config.tls_key)
    return context


async def serve(config: WebConfig) -> None:
    from aiohttp import web

    from vpsshell.web.app import build_app

    runner = web.AppRunner(build_app(config), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.listen, config.port, ssl_context=tls_context(config))
    await site.start()
    log.info("vpsshell-web %s on https://%s:%d/", __version__, config.listen, config.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"vpsshell-web: listening on {config.listen}:{config.port}", flush=True)
    await stop.wait()
    await runner.cleanup()


def _check(config: WebConfig) -> str | None:
    """Why the service cannot serve with ``config``, or None."""
    from vpsshell.web.assets import missing_assets

    try:
        tls_context(config)
    except (OSError, ssl.SSLError) as exc:
        return f"TLS pair {config.tls_certificate}, {config.tls_key}: {exc}"
    missing = missing_assets(config.assets_dir)
    if missing:
        return f"{config.assets_dir} lacks {', '.join(missing)}: run vpsshell-web fetch-assets"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="vpsshell-web: %(message)s")
    try:
        config = (
            load_web_config(args.config)
            if os.path.exists(args.config) or args.config != WEB_CONFIG or not args.command
            else WebConfig()
        )
    except WebConfigError as exc:
        print(f"vpsshell-web: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "fetch-assets":
        from vpsshell.web.assets import AssetError, fetch_assets

        directory = args.dir or config.assets_dir
        try:
            written = fetch_assets(directory, args.tarball_dir)
        except AssetError as exc:
            print(f"vpsshell-web: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        print(f"vpsshell-web: wrote {', '.join(written)} to {directory}")
        return EXIT_OK
    if args.command == "self-signed":
        try:
            make_self_signed(args.cert, args.key, args.name, args.owner)
        except (OSError, KeyError, subprocess.CalledProcessError) as exc:
            print(f"vpsshell-web: cannot make the pair: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        return EXIT_OK
    problem = _check(config)
    if problem is not None:
        print(f"vpsshell-web: {problem}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.check_config:
        print(f"vpsshell-web: {config.source} is valid")
        return EXIT_OK
    if os.geteuid() == 0:
        print("vpsshell-web: refusing to serve as root (run it as vpsshell-web)", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"vpsshell-web: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
