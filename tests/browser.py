"""Headless Chromium driven over the DevTools protocol: open a page, wait for text, click, read, screenshot.

`--dump-dom` snapshots a page as loaded; some views need a click first (the Prefect UI's flow-run tabs reset a `?tab=`
in the URL while the run is loading). The protocol is plain JSON over a websocket (`websockets` comes with Prefect),
so no browser-automation package is needed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--remote-debugging-port=0",
]


def chromium() -> str:
    """Debian's chromium; a skip without it, except under CI (CI=true), where it is a failure."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """One headless Chromium (its own process group and profile) and its first page."""

    def __init__(self, profile: Path, log: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self._log = log
        with log.open("wb") as out:
            self._proc = subprocess.Popen(
                [chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._ids = itertools.count(1)
        self._ws = self._connect_to_page()

    def _connect_to_page(self) -> ClientConnection:
        # Chromium writes the port it chose ("DevTools listening on ws://127.0.0.1:PORT/...") once it listens.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", self._log.read_text(errors="replace"))
            if found:
                with urllib.request.urlopen(f"http://127.0.0.1:{found[1]}/json/list", timeout=10) as response:
                    pages = [t for t in json.loads(response.read()) if t["type"] == "page"]
                if pages:
                    return connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
            if self._proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"chromium did not open its DevTools port:\n{self._log.read_text(errors='replace')[-2000:]}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; the events that arrive before its answer are not needed here."""
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=120))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, texts: list[str], timeout: float = 120) -> str:
        """The page's visible text once every one of `texts` is in it; a test failure with the text otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.text()
            if all(t in shown for t in texts) or time.monotonic() > deadline:
                missing = [t for t in texts if t not in shown]
                assert not missing, f"{missing} not shown after {timeout} s; the page shows:\n{shown[:3000]}"
                return shown
            time.sleep(0.5)

    def click(self, label: str) -> None:
        """Click the innermost visible element whose own text is exactly `label` (a tab, a button)."""
        clicked = self.evaluate(
            "(() => { const all = [...document.querySelectorAll('button, a, [role=tab], li, span, div')];"
            f" const hit = all.reverse().find(e => e.offsetParent && e.textContent.trim() === {json.dumps(label)});"
            " if (hit) { hit.click(); return true; } return false; })()"
        )
        assert clicked, f"nothing labelled {label!r} to click; the page shows:\n{self.text()[:2000]}"

    def screenshot(self, path: Path, settle: float = 30) -> None:
        """Save a PNG once two captures a second apart are identical (a canvas such as Prefect's graph is drawn
        after the page's text is there), or the last one after `settle` seconds."""
        path.parent.mkdir(parents=True, exist_ok=True)
        previous, deadline = b"", time.monotonic() + settle
        while True:
            shot = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
            if shot == previous or time.monotonic() > deadline:
                break
            previous = shot
            time.sleep(1)
        path.write_bytes(shot)

    def close(self) -> None:
        self._ws.close()
        try:
            os.killpg(self._proc.pid, 9)  # the browser and its renderer, GPU and utility processes
        except ProcessLookupError:
            return
        self._proc.wait(timeout=30)
