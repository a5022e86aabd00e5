"""``vpsshell-web``'s config (``/etc/vpsshell/web.toml``): where it listens, its TLS pair, the
helper's web socket, the page's public URL, and its limits.

Every path and default of the web service is here. Unknown keys are errors (a typo is caught by
``vpsshell-web --check-config``), as in the helper's config.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from vpsshell.paths import WEB_PORT, default_web_url

WEB_CONFIG = "/etc/vpsshell/web.toml"
WEB_SOCKET = "/run/vpsshell/web.sock"  # the helper's web_socket
ASSETS_DIR = "/usr/local/share/vpsshell-web"  # xterm.js, from ``vpsshell-web fetch-assets``


class WebConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message names the key."""


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, as a browser sends it in ``Origin``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


@dataclass(frozen=True)
class WebConfig:
    listen: str = "0.0.0.0"  # noqa: S104  # a public service
    port: int = WEB_PORT
    tls_certificate: str = "/etc/vpsshell/web/cert.pem"  # PEM, the chain after the certificate
    tls_key: str = "/etc/vpsshell/web/key.pem"  # readable by the service's user only
    helper_socket: str = WEB_SOCKET
    public_url: str = ""  # https URL of the page (the helper's web_url); "": https://FQDN:port/
    allowed_origins: tuple[str, ...] = ()  # more origins the page may be loaded from
    assets_dir: str = ASSETS_DIR
    max_sessions: int = 256  # browser consoles at once
    redeems_per_minute_per_address: int = 20  # console links one client address may try
    source: str = "<defaults>"

    @property
    def page_url(self) -> str:
        """``public_url``, else this host's name on ``port``: the helper's default ``web_url``."""
        return self.public_url or default_web_url(self.port)

    @property
    def origins(self) -> frozenset[str]:
        found = {origin_of(self.page_url)}
        return frozenset(found | {origin.lower().rstrip("/") for origin in self.allowed_origins})


_STRINGS = ("listen", "tls_certificate", "tls_key", "helper_socket", "public_url", "assets_dir")
_NUMBERS = {
    "port": (1, 65535),
    "max_sessions": (1, 100000),
    "redeems_per_minute_per_address": (1, 100000),
}


def parse_web_config(data: dict[str, Any], source: str = "<string>") -> WebConfig:
    known = set(_STRINGS) | set(_NUMBERS) | {"allowed_origins"}
    unknown = set(data) - known
    if unknown:
        raise WebConfigError(f"{source}: unknown key(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {"source": source}
    for key in _STRINGS:
        if key in data:
            value = data[key]
            if not isinstance(value, str) or not value:
                raise WebConfigError(f"{source}: {key}: expected a non-empty string")
            values[key] = value
    for key, (low, high) in _NUMBERS.items():
        if key in data:
            value = data[key]
            if type(value) is not int or not low <= value <= high:
                raise WebConfigError(f"{source}: {key}: expected an integer in {low}..{high}")
            values[key] = value
    public_url = values.get("public_url", "")
    if public_url and not public_url.startswith("https://"):
        raise WebConfigError(f"{source}: public_url: expected an https:// URL")
    origins = data.get("allowed_origins", [])
    if not isinstance(origins, list) or not all(
        isinstance(o, str) and o.startswith("https://") for o in origins
    ):
        raise WebConfigError(f"{source}: allowed_origins: expected a list of https:// origins")
    values["allowed_origins"] = tuple(origins)
    return WebConfig(**values)


def load_web_config(path: str) -> WebConfig:
    try:
        with open(path, "rb") as fh:
            data = tomllib.loads(fh.read(1024 * 1024).decode("utf-8"))
    except OSError as exc:
        raise WebConfigError(f"{path}: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WebConfigError(f"{path}: {exc}") from None
    return parse_web_config(data, path)
