"""A web console on this machine for the browser tests and the benchmark: a real ``vpsshelld``
(sim backend) with its web socket, a real ``vpsshell-web`` running as a user of its own with a
self-signed pair, xterm.js fetched from the npm registry, and headless Chromium driven by
Selenium.

Nothing here stands in for a part of vpsshell: links are minted with the real ``vpsshell -c
webconsole`` as a tenant, or ``vpsshell-admin console-url``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from harness import BIN, Helper, run, vpsshell_admin, wait_until

WEB_USER = "vpst-web"
ASSETS_CACHE = Path("/var/tmp/vpsshell-web-assets")  # checked against the pins on every fetch
ARTIFACTS = Path("/var/tmp/vpsshell-test-artifacts")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            return f"{path} is missing (Debian: {package})"
    try:
        import aiohttp  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed in the test venv (pyproject's dev extra)"
    return None


def ensure_web_user() -> None:
    try:
        pwd.getpwnam(WEB_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/false", WEB_USER], check=True)


def remove_web_user() -> None:
    subprocess.run(["userdel", WEB_USER], check=False, capture_output=True)


def fetch_xterm() -> str | None:
    """xterm.js in ``ASSETS_CACHE``, fetched (and checked) if missing; why not, or None."""
    from vpsshell.web.assets import AssetError, fetch_assets, missing_assets

    if not missing_assets(str(ASSETS_CACHE)):
        return None
    try:
        fetch_assets(str(ASSETS_CACHE))
    except AssetError as exc:
        return f"xterm.js could not be fetched from the npm registry: {exc}"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def web_helper_config(web_socket: Path, port: int) -> str:
    """The helper's keys for a web console on 127.0.0.1:``port``."""
    return textwrap.dedent(f"""\
        web_socket = "{web_socket}"
        web_socket_user = "{WEB_USER}"
        web_url = "https://127.0.0.1:{port}/"
        """)


class WebConsole:
    """``vpsshell-web`` as ``WEB_USER`` in front of ``helper`` (started with
    ``web_helper_config``)."""

    def __init__(
        self, root: Path, helper: Helper, port: int, web_socket: Path, assets: Path = ASSETS_CACHE
    ) -> None:
        self.root = root
        self.helper = helper
        self.port = port
        self.url = f"https://127.0.0.1:{port}/"
        self.config = root / "web.toml"
        self.log = root / "web.log"
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(mode=0o755, exist_ok=True)
        cert, key = root / "cert.pem", root / "key.pem"
        done = subprocess.run(
            [str(BIN / "python"), "-I", "-m", "vpsshell.web.main", "self-signed"]
            + ["--cert", str(cert), "--key", str(key), "--name", "localhost", "--owner", WEB_USER],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        self.config.write_text(
            textwrap.dedent(f"""\
            listen = "127.0.0.1"
            port = {port}
            tls_certificate = "{cert}"
            tls_key = "{key}"
            helper_socket = "{web_socket}"
            public_url = "{self.url}"
            assets_dir = "{assets}"
            """)
        )

    def start(self) -> WebConsole:
        self.process = subprocess.Popen(
            ["runuser", "-u", WEB_USER, "--", str(BIN / "python"), "-I", "-m"]
            + ["vpsshell.web.main", "--config", str(self.config)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 20, f"vpsshell-web never answered on {self.url}")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"vpsshell-web exited: {self.log.read_text()[-2000:]}")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=2) as raw,
                context.wrap_socket(raw),
            ):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def mint(self, user: str, domain: str, *options: str) -> str:
        """A console link from ``webconsole DOMAIN OPTIONS`` run by ``user``."""
        result = run(user, self.helper, " ".join(["webconsole", domain, *options, "--json"]))
        assert result.code == 0, result
        return str(result.json()["url"])

    def mint_as_admin(self, user: str, domain: str, *options: str) -> dict[str, Any]:
        result = vpsshell_admin(self.helper, "console-url", user, domain, *options, "--json")
        assert result.code == 0, result
        return dict(result.json())


def browser() -> Any:
    """Headless Chromium (as root it needs --no-sandbox), accepting the self-signed pair."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1000,700")
    options.accept_insecure_certs = True
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


SCREEN_SCRIPT = """
return Array.from(document.querySelectorAll('.xterm-rows > div'))
    .map((row) => row.textContent).join('\\n');
"""


def screen(driver: Any) -> str:
    """The terminal's rows as text."""
    return str(driver.execute_script(SCREEN_SCRIPT)).replace("\xa0", " ")


def page_state(driver: Any) -> str:
    return str(driver.execute_script("return document.body.dataset.state || ''"))


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').textContent"))


def type_keys(driver: Any, text: str) -> None:
    """Keystrokes into the terminal, as a person types them (Enter for each newline)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")
    field.send_keys(text.replace("\n", Keys.ENTER))


def keep_screenshot(driver: Any, directory: Path, name: str) -> Path:
    """A PNG of the page in ``directory`` (the test's tmp dir), copied to ``ARTIFACTS`` (which
    outlives the test run); returns the copy and prints where it is."""
    shot = directory / name
    assert driver.save_screenshot(str(shot)), "no screenshot"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = ARTIFACTS / name
    shutil.copy(shot, kept)
    print(f"\nscreenshot of the web console: {kept}")
    return kept
