"""A server started as a subprocess on loopback, ready once its health path answers 200."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx


class ServedProcess:
    """Subclasses set `what` and `health_path`, then call `_spawn`."""

    what = "the server"
    health_path = "/healthz"
    base_url: str
    log: Path
    process: subprocess.Popen[bytes]

    def _spawn(
        self, command: list[str], env: dict[str, str], ready_s: float, **popen: object
    ) -> None:
        with self.log.open("w") as log:
            self.process = subprocess.Popen(  # type: ignore[call-overload]
                command, env=env, stdout=log, stderr=subprocess.STDOUT, **popen
            )
        self._wait_ready(ready_s)

    def _wait_ready(self, ready_s: float) -> None:
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.what} exited:\n{self.log.read_text()}")
            try:
                if httpx.get(self.base_url + self.health_path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.what} did not become ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
