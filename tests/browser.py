"""A real headless browser for tests: Debian's chromium, driven over the DevTools
protocol on a pipe (--remote-debugging-pipe: JSON messages ending in NUL on file
descriptors 3 and 4), so no extra package and no TCP port are needed.

It runs in a network namespace of its own (``unshare -n``) where there is no
network at all, and records every request the page makes, every console
message and every uncaught exception, so a test can say "this page loads
offline with no errors" and mean it.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageLoad:
    url: str
    console: list[dict] = field(default_factory=list)  # {"level", "text"}
    exceptions: list[str] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)  # browser log entries (failed loads, CSP, ...)
    requests: list[str] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    screenshot: bytes | None = None

    @property
    def errors(self) -> list[str]:
        found = [f"console.{m['level']}: {m['text']}" for m in self.console if m["level"] in ("error", "assert")]
        found += [f"exception: {e}" for e in self.exceptions]
        found += [f"log {e.get('level')}: {e.get('text')} {e.get('url') or ''}".strip() for e in self.log if e.get("level") == "error"]
        return found


class Browser:
    def __init__(self, timeout: float = 30.0):
        binary = chromium()
        if binary is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="labctl-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={self.profile}", "about:blank"]
        if shutil.which("unshare") and os.geteuid() == 0:
            argv = ["unshare", "--net", "--", *argv]  # a namespace with no network at all

        def wire() -> None:
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.process = subprocess.Popen(argv, pass_fds=(3, 4), preexec_fn=wire, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message: dict = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        wanted = self._id
        reply = self.wait_for(lambda m: m.get("id") == wanted)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_for(self, predicate, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if predicate(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited ({self.process.poll()})")
                self._buffer += chunk

    def load(self, path: Path, evaluate: dict[str, str] | None = None, screenshot: bool = False,
             width: int = 1280, height: int = 900, down_to: str | None = None) -> PageLoad:
        """Open a file, wait for its load event, evaluate expressions, optionally take a screenshot: of the
        full page, or from the top down to the bottom of the element ``down_to`` (a CSS selector)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        start = len(self.events)
        url = path.resolve().as_uri()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session)
        time.sleep(0.3)  # late console messages and exceptions
        result = PageLoad(url)
        for name, expression in (evaluate or {}).items():
            value = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
            result.values[name] = value.get("result", {}).get("value")
        if screenshot:
            params: dict = {"format": "png", "captureBeyondViewport": True}
            if down_to:
                bottom = self.send("Runtime.evaluate", {"expression": f"document.querySelector({json.dumps(down_to)})"
                                                                      ".getBoundingClientRect().bottom + window.scrollY",
                                                        "returnByValue": True}, session=session)["result"]["value"]
                params["clip"] = {"x": 0, "y": 0, "width": width, "height": bottom + 8, "scale": 1}
            shot = self.send("Page.captureScreenshot", params, session=session)
            result.screenshot = base64.b64decode(shot["data"])
        for event in self.events[start:]:
            if event.get("sessionId") != session:
                continue
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                result.console.append({"level": params.get("type"), "text": text})
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                result.exceptions.append(details.get("exception", {}).get("description") or details.get("text", "?"))
            elif method == "Log.entryAdded":
                result.log.append(params.get("entry", {}))
            elif method == "Network.requestWillBeSent":
                result.requests.append(params.get("request", {}).get("url", ""))
        self.send("Target.closeTarget", {"targetId": target})
        return result

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
