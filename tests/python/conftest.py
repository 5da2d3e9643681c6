"""Fixtures: the real `moe-swarm serve` binary on free loopback ports with a temporary cache dir.

The binary is $MOE_SWARM_BIN (set by ctest) or build/bin/moe-swarm. The daemon logs its bound
gRPC address ("gRPC listening on HOST:PORT") and "stage 7/7 ready" when it serves.
"""
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def swarm_bin() -> str:
    path = os.environ.get("MOE_SWARM_BIN") or str(ROOT / "build" / "bin" / "moe-swarm")
    if not os.access(path, os.X_OK):
        pytest.fail(f"moe-swarm binary not found at {path} (set MOE_SWARM_BIN)")
    return path


class Daemon:
    """One `moe-swarm serve` process; its stderr is collected in `log`."""

    def __init__(self, cache_dir: str, *extra: str):
        self.cache_dir = cache_dir
        self.args = [swarm_bin(), "serve", "--address", "127.0.0.1", "--port", "0",
                     "--metrics-address", "127.0.0.1", "--metrics-port", "0",
                     "--cache-dir", cache_dir, *extra]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines = []
        self._ready = threading.Event()
        self.address = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"gRPC listening on (\S+:\d+)", line)
            if m:
                self.address = m.group(1)
            if "stage 7/7 ready" in line:
                self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._ready.wait(0.1):
                return self
            if self.proc.poll() is not None:
                break
        pytest.fail(f"daemon did not become ready (rc={self.proc.poll()}):\n{self.log}")

    def wait_exit(self, timeout=60) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def cache_dir():
    with tempfile.TemporaryDirectory(prefix="moe-swarm-pytest-") as d:
        yield d


@pytest.fixture(scope="session")
def daemon(cache_dir):
    d = Daemon(cache_dir).wait_ready()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def model_name(daemon) -> str:
    m = re.search(r"serving (\S+) \(KServe models", daemon.log)
    assert m, daemon.log
    return m.group(1)
