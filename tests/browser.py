"""Headless Chromium, driven through the Chrome DevTools Protocol (CDP) with our own client.

The DevTools Protocol is JSON messages over a WebSocket, so `ws_server.connect` drives it: our
client against Chromium's server, while Chromium's clients (the pages) talk to our servers.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import ws_server
from tests.support import stop_process

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = ("no Chromium found: install it (Debian/Ubuntu: sudo apt-get install chromium) "
                "or set CHROMIUM=/path/to/chrome")
START_TIMEOUT = 30.0


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium process with a fresh profile; `ws_url` is its DevTools endpoint."""

    def __init__(self, binary: str, *extra_args: str) -> None:
        self.profile = tempfile.TemporaryDirectory(prefix="cdp-profile-", ignore_cleanup_errors=True)
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--remote-debugging-port=0", *extra_args,
             f"--user-data-dir={self.profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # With port 0 Chromium picks a free port and writes it, then the browser's target path,
        # to DevToolsActivePort in the profile.
        active_port = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            lines = active_port.read_text().split("\n") if active_port.exists() else []
            if len(lines) >= 2 and lines[1]:
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"Chromium did not start (exit code {self.process.returncode})")
            time.sleep(0.05)
        self.ws_url = f"ws://127.0.0.1:{int(lines[0])}{lines[1]}"

    def close(self) -> None:
        stop_process(self.process)
        self.profile.cleanup()


class CDPError(Exception):
    pass


class DevTools:
    """A CDP session over one WebSocket: commands get their answer by id; events are kept."""

    def __init__(self, connection: ws_server.Connection) -> None:
        self.connection = connection
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, ws_url: str) -> DevTools:
        limits = ws_server.Limits(max_size=64 << 20, ping_interval=0)  # screenshots are large
        return cls(await ws_server.connect(ws_url, limits=limits))

    async def _read(self) -> None:
        try:
            async for text in self.connection:
                message = json.loads(text)
                future = self._waiting.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
                elif "method" in message:
                    self.events.append(message)
        except ws_server.ConnectionClosed:
            pass
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(CDPError("DevTools connection closed"))

    async def send(self, method: str, params: dict | None = None, session: str | None = None,
                   timeout: float = 10.0) -> dict:
        id = next(self._ids)
        message = {"id": id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self._waiting[id] = future
        await self.connection.send(json.dumps(message))
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def close(self) -> None:
        await self.connection.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class Tab:
    """One page: open a URL, evaluate JavaScript in it, wait for a condition."""

    def __init__(self, devtools: DevTools, target_id: str, session: str) -> None:
        self.devtools, self.target_id, self.session = devtools, target_id, session

    @classmethod
    async def open(cls, devtools: DevTools, url: str) -> Tab:
        target = await devtools.send("Target.createTarget", {"url": url})
        attached = await devtools.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        tab = cls(devtools, target["targetId"], attached["sessionId"])
        await tab.send("Page.enable")
        return tab

    async def send(self, method: str, params: dict | None = None) -> dict:
        return await self.devtools.send(method, params, self.session)

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0):
        """Evaluate `expression` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except CDPError:  # the page may be loading
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}; "
                                     f"page says: {await self.evaluate('document.body && document.body.innerText')!r}")
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path, width: int = 1000, height: int = 640, scale: float = 0.75) -> bytes:
        """A PNG of the page as a `width` x `height` window shows it, made `scale` times as large
        (small enough for a README), written to `path`; returns its bytes."""
        await self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                               "deviceScaleFactor": 1, "mobile": False})
        await self.evaluate("new Promise(function (done) { requestAnimationFrame(function () { done(true); }); })")
        shot = await self.send("Page.captureScreenshot", {"format": "png", "clip": {
            "x": 0, "y": 0, "width": width, "height": height, "scale": scale}})
        data = base64.b64decode(shot["data"])
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return data

    async def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                       "windowsVirtualKeyCode": 13, "text": "\r"})

    async def close(self) -> None:
        await self.devtools.send("Target.closeTarget", {"targetId": self.target_id})
