"""Open a page in a real browser (Debian's headless Chromium) and report what a reader's browser would:
console messages, uncaught exceptions, every request the page made, and the values of expressions
evaluated in it. Spoken to over the DevTools protocol on a pipe (--remote-debugging-pipe: file
descriptors 3 and 4, JSON messages ending in a NUL byte), so no port is opened, and nothing beyond the
standard library is needed. The browser is started with a fresh profile, its background networking
off, and stopped by its PID on every path (pytest imports this helper; it is not a test module)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--remote-debugging-pipe"]  # fmt: skip


def chromium() -> str | None:
    """The Chromium binary, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        """Everything a reader would see as an error in the console."""
        return ([text for kind, text in self.console if kind in ("error", "assert")] + self.exceptions
                + self.log_errors)  # fmt: skip


class Browser:
    """One headless Chromium, driven over the DevTools pipe. Use as a context manager: the process
    (and its profile directory) is gone when the block ends, whatever happened in it."""

    def __init__(self, binary: str, timeout: float = 60.0) -> None:
        self.binary, self.timeout = binary, timeout
        self.proc: subprocess.Popen | None = None
        self._id, self._buffer, self._events = 0, b"", []

    def __enter__(self) -> Browser:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def as_fds_3_and_4() -> None:  # in the child: the protocol's file descriptors, at their numbers
            r, w = os.dup(to_browser_r), os.dup(from_browser_w)
            r, w = (os.dup(r) if r in (3, 4) else r), (os.dup(w) if w in (3, 4) else w)
            os.dup2(r, 3)
            os.dup2(w, 4)

        try:
            self.proc = subprocess.Popen(
                [self.binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                preexec_fn=as_fds_3_and_4, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self._send("Browser.close")
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        finally:
            if self.proc is not None and self.proc.poll() is None:
                # Its renderer and GPU helpers share its process group (start_new_session).
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)

    # -- the protocol --------------------------------------------------------------------------

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        return self._id

    def _read(self, until: float) -> bool:
        """Read what the browser sent until `until`; False when the time ran out with nothing new."""
        ready, _, _ = select.select([self._from_browser], [], [], max(0.0, until - time.monotonic()))
        if not ready:
            return False
        chunk = os.read(self._from_browser, 1 << 20)
        if not chunk:
            raise RuntimeError("Chromium closed the DevTools pipe (it exited)")
        self._buffer += chunk
        while b"\0" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\0", 1)
            self._events.append(json.loads(raw))
        return True

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        wanted = self._send(method, params, session)
        deadline = time.monotonic() + self.timeout
        while True:
            for i, message in enumerate(self._events):
                if message.get("id") == wanted:
                    del self._events[i]
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message.get("result", {})
            if not self._read(deadline) and time.monotonic() >= deadline:
                raise TimeoutError(f"Chromium did not answer {method} in {self.timeout} s")

    def open(self, url: str, expressions: dict[str, str], settle: float = 0.5, screenshot: Path | None = None
             ) -> PageReport:  # fmt: skip
        """Load `url` in a new tab, wait for its load event (and `settle` seconds for scripts that run
        after it), then evaluate each expression; report what the page did."""
        if not url.startswith(("file://", "http://127.0.0.1")):
            raise ValueError(f"only local pages are opened here, not {url}")
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session=session)
        self._events.clear()
        self.call("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            if not self._read(deadline) and time.monotonic() >= deadline:
                raise TimeoutError(f"{url} did not finish loading in {self.timeout} s")
        settled = time.monotonic() + settle
        while time.monotonic() < settled:
            self._read(settled)
        report = PageReport()
        for name, expression in expressions.items():
            result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                               session=session)  # fmt: skip
            if "exceptionDetails" in result:
                report.values[name] = RuntimeError(result["exceptionDetails"].get("text", "exception"))
            else:
                report.values[name] = result["result"].get("value")
        for event in self._events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                report.console.append((params.get("type", ""), text))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                report.exceptions.append(
                    f"{details.get('text')} {details.get('exception', {}).get('description', '')} "
                    f"(line {details.get('lineNumber')})"
                )
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                report.log_errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                report.requests.append(params.get("request", {}).get("url", ""))
        if screenshot is not None:  # for a person checking the layout by eye
            import base64

            self.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1,
                                                             "mobile": False}, session=session)  # fmt: skip
            shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                             session=session)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        self.call("Target.closeTarget", {"targetId": target})
        return report


def open_page(path: Path, expressions: dict[str, str], screenshot: Path | None = None) -> PageReport:
    """`path` opened in a fresh headless Chromium (started and stopped here)."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("Chromium is not installed")
    with Browser(binary) as browser:
        return browser.open(Path(path).resolve().as_uri(), expressions, screenshot=screenshot)
