"""The HTTPS side of ``vpsshell-web``: one page, its script and style, xterm.js, one WebSocket.

Every response carries a Content-Security-Policy that allows scripts from this origin only (the
page has no inline script: its code is ``console.js``), no framing, no referrer, and no cookies
are ever set: the console link's token is the only credential, and it goes to the helper, not
here. The WebSocket is accepted only from the page's own origin (``Origin`` checked against
``public_url`` and ``allowed_origins``: another site cannot drive a console in a visitor's
browser), and each client address may try only so many links a minute. Static files are served
from a fixed list of names, never from a path the request chose.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import WSMsgType, web

from vpsshell.daemon.ratelimit import TokenBucket
from vpsshell.web.assets import ASSET_NAMES
from vpsshell.web.config import WebConfig
from vpsshell.web.relay import REDEEM_WAIT_SECONDS, browser_text, run_console, to_page

log = logging.getLogger("vpsshell.web")

# style-src allows inline style: xterm.js sizes and colours its rows with style elements it
# makes itself; scripts come from this origin only
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self'; font-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",  # with the opener policy: isolated
    "Cross-Origin-Resource-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=31536000",
    "Cache-Control": "no-store",
}
PAGE_FILES = {"console.js": "text/javascript", "console.css": "text/css"}
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".json": "application/json"}
WS_MAX_MESSAGE_BYTES = 64 * 1024  # a paste larger than this arrives in several


def _static_text(name: str) -> bytes:
    return resources.files("vpsshell.web").joinpath("static", name).read_bytes()


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    if not response.prepared:  # a WebSocket's handshake went out already
        response.headers.update(SECURITY_HEADERS)
    return response


class ConsoleService:
    """The handlers, with the service's config and counters."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.origins = config.origins
        per_minute = config.redeems_per_minute_per_address
        self.attempts = TokenBucket(per_minute, per_minute)
        self.sessions = 0

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=_static_text("index.html"), content_type="text/html")

    async def page_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in PAGE_FILES:
            raise web.HTTPNotFound()
        return web.Response(body=_static_text(name), content_type=PAGE_FILES[name])

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSET_NAMES:
            raise web.HTTPNotFound()
        path = os.path.join(self.config.assets_dir, name)
        try:
            body = await asyncio.to_thread(_read, path)
        except OSError:
            log.error("%s is missing: run vpsshell-web fetch-assets", path)
            raise web.HTTPNotFound() from None
        content_type = ASSET_TYPES.get(os.path.splitext(name)[1], "text/plain")
        return web.Response(body=body, content_type=content_type, charset="utf-8")

    def _refusal(self, request: web.Request) -> str | None:
        """Why this WebSocket handshake is refused, or None."""
        origin = (request.headers.get("Origin") or "").lower().rstrip("/")
        if origin not in self.origins:
            return f"origin {origin[:100]!r} is not allowed"
        if self.sessions >= self.config.max_sessions:
            return "too many consoles open"
        if not self.attempts.take(hash(request.remote or "")):
            return "too many console links tried from this address"
        return None

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            log.warning("websocket from %s refused: %s", request.remote, refusal)
            raise web.HTTPForbidden(text=refusal)
        ws = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE_BYTES, heartbeat=None)
        await ws.prepare(request)
        self.sessions += 1
        try:
            try:
                message = await ws.receive(timeout=REDEEM_WAIT_SECONDS)
            except TimeoutError:
                return ws
            first = browser_text(message.data) if message.type == WSMsgType.TEXT else None
            if first is None or first.get("op") != "redeem":
                await ws.send_str(to_page("refused", kind="usage", text="no link"))
                return ws
            how = await run_console(ws, self.config.helper_socket, request.remote or "", first)
            log.info("console from %s ended: %s", request.remote, how)
        finally:
            self.sessions -= 1
            await ws.close()
        return ws


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def build_app(config: WebConfig) -> web.Application:
    service = ConsoleService(config)
    app = web.Application(middlewares=[_security_headers], client_max_size=4096)
    app.router.add_get("/", service.page)
    app.router.add_get("/console/{name}", service.page_file)
    app.router.add_get("/xterm/{name}", service.asset)
    app.router.add_get("/ws", service.websocket)
    return app
