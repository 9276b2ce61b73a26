"""Fixtures that start the real envd binary for the E2B SDK tests.

E2B_DEBUG=true makes the official `e2b` SDK talk straight to an envd on
localhost:49983, which is where the `envd` fixture starts one.
"""

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ENVD_PORT = 49983


def _target_dir() -> Path:
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))


def envd_binary() -> Path:
    explicit = os.environ.get("WRENN_ENVD_BIN")
    if explicit:
        return Path(explicit)
    return _newest("envd")


def _newest(name: str) -> Path:
    """The most recently built of the release and debug binaries."""
    built = [p for p in (_target_dir() / "release" / name, _target_dir() / "debug" / name) if p.exists()]
    if not built:
        raise RuntimeError(f"{name} is not built: run `cargo build -p {name}` or set the path in the environment")
    return max(built, key=lambda p: p.stat().st_mtime)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry))
            kids.extend(_descendants(int(entry)))
    return kids


@pytest.fixture(scope="session")
def envd():
    """A running envd on 127.0.0.1:49983, stopped (with everything it started) at the end."""
    if _port_open(ENVD_PORT):
        raise RuntimeError(f"port {ENVD_PORT} is taken; stop whatever listens there first")
    proc = subprocess.Popen(
        [str(envd_binary()), "--host", "127.0.0.1", "--port", str(ENVD_PORT)],
        env={**os.environ, "ENVD_LOG": "envd=warn"},
    )
    deadline = time.time() + 10
    while not _port_open(ENVD_PORT):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("envd did not start")
        time.sleep(0.02)
    try:
        yield proc
    finally:
        for pid in _descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait()


@pytest.fixture()
def sbx(envd, monkeypatch):
    monkeypatch.setenv("E2B_DEBUG", "true")
    from e2b import Sandbox

    return Sandbox.create()


@pytest.fixture()
def workdir(tmp_path):
    """A scratch directory the test's files go in; removed by pytest."""
    return str(tmp_path)


def wrenn_binary() -> Path:
    explicit = os.environ.get("WRENN_BIN")
    if explicit:
        return Path(explicit)
    return _newest("wrenn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_wrenn_up(data: Path):
    """`wrenn up` on the data directory `data` (with the test `base`
    template) and a free port; yields (base_url, api_key, process). Stopped
    with Ctrl-C (SIGINT), which destroys its sandboxes; killed, with what it
    started, by pid if it does not stop within 30 s."""
    import json

    templates = Path(os.environ.get("WRENN_TEST_TEMPLATES", "/var/tmp/wrenn-test-data/templates"))
    if not (templates / "base" / "rootfs" / "bin").exists():
        raise RuntimeError(f"no test template in {templates}; run scripts/test.sh")
    (data / "templates").mkdir()
    (data / "templates" / "base").symlink_to(templates / "base")
    config = data / "cli.json"
    port = _free_port()
    log = open(data / "up.log", "w")
    proc = subprocess.Popen(
        [str(wrenn_binary()), "--data-dir", str(data), "up", "--listen", f"127.0.0.1:{port}", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "WRENN_LOG": "warn"},
    )
    try:
        deadline = time.time() + 60
        while not (_port_open(port) and config.exists()):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("wrenn up did not start: " + (data / "up.log").read_text())
            time.sleep(0.05)
        key = json.loads(config.read_text())["api_key"]
        yield f"http://127.0.0.1:{port}", key, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            for pid in _descendants(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def wrenn_up(tmp_path_factory):
    """`wrenn up` shared by a module's tests; yields (base_url, api_key,
    data_dir). One per module, stopped before the next module starts its
    own: two agents on one host refuse to run side by side."""
    data = tmp_path_factory.mktemp("wrenn-up")
    with running_wrenn_up(data) as (url, key, _):
        yield url, key, data
