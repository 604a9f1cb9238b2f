"""Open a local HTML page in headless Chromium, on a closed network, and say what loaded.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: the
browser reads commands on fd 3 and writes replies on fd 4, each a JSON message ended by a NUL
byte; chromium's content/browser/devtools/devtools_pipe_handler.cc), so no port is opened and
no WebSocket library is needed. Every request the page makes is recorded (Network
domain): a self-contained page makes none beyond its own file and data: URIs. The network is
closed by the flags (no proxy that works, no host that resolves, no background services).

Run as ``python -m report_verification.headless_chromium PAGE.html SHOT.png [HEIGHT]`` (tests/
on the path) to take a screenshot of a page's top HEIGHT pixels (default 6000).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLOSED_NETWORK = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--password-store=basic",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)

# What the page is asked once it has loaded: each image and whether it decoded, the tables.
INSPECT = """JSON.stringify({
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
                                          width: i.naturalWidth, height: i.naturalHeight})),
  tables: [...document.querySelectorAll('table')].map(t => t.rows.length),
  headings: [...document.querySelectorAll('h1, h2, h3')].map(h => h.textContent),
  scripts: document.scripts.length, height: document.documentElement.scrollHeight})"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """One headless Chromium, spoken to over the DevTools pipe."""

    def __init__(self, executable: str, timeout: float = 60.0):
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="vae-bench-chromium-")
        # Its log goes to a file: a pipe nobody reads would stall a chatty browser.
        self._log = open(Path(self._profile.name) / "stderr.log", "w+b")  # noqa: SIM115
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()

        # fd 3 reads commands, fd 4 writes replies: bash sets them up between fork and exec
        # (not sh: dash takes one-digit fds only), so no Python code runs in the child (a
        # preexec_fn would, and forking a process with JAX's threads to run Python can hang).
        self.process = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec "$0" "$@" 3<&{commands_r} 4>&{replies_w}',
                executable,
                *CLOSED_NETWORK,
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            pass_fds=(commands_r, replies_w),
        )
        os.close(commands_r)
        os.close(replies_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read()
            if event.get("method") == method:
                return event
            self.events.append(event)

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(left, 0))
            chunk = os.read(self._replies, 1 << 20) if ready else b""
            if not chunk:
                self._log.seek(0)
                err = (
                    self._log.read().decode(errors="replace")[-2000:]
                    if self.process.poll() is not None
                    else "no reply in time"
                )
                raise RuntimeError(f"chromium stopped answering: {err}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._commands)
        os.close(self._replies)
        self._log.close()
        self._profile.cleanup()


def inspect_page(
    page: Path,
    screenshot: Path | None = None,
    *,
    width: int = 1300,
    max_height: int = 6000,
    executable: str | None = None,
) -> dict:
    """Load ``page`` (a file) and return what INSPECT reports, plus ``requests``: every URL
    the page asked for. With ``screenshot``, the page's top ``max_height`` pixels too."""
    browser = Browser(executable or chromium())
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.send("Network.enable", session)
        browser.send("Page.enable", session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        browser.send("Page.navigate", session, url=page.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        found = json.loads(
            browser.send("Runtime.evaluate", session, expression=INSPECT, returnByValue=True)[
                "result"
            ]["value"]
        )
        found["requests"] = [
            e["params"]["request"]["url"]
            for e in browser.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        if screenshot is not None:
            height = min(found["height"], max_height)
            shot = browser.send(
                "Page.captureScreenshot",
                session,
                format="png",
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            )
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return found
    finally:
        browser.close()


if __name__ == "__main__":
    height = int(sys.argv[3]) if len(sys.argv) > 3 else 6000
    result = inspect_page(Path(sys.argv[1]), Path(sys.argv[2]), max_height=height)
    print(json.dumps({k: v for k, v in result.items() if k != "images"}, indent=1))
    print(
        f"{sum(i['complete'] and i['width'] > 0 for i in result['images'])} of "
        f"{len(result['images'])} figures loaded"
    )
