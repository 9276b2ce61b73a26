"""A new user's first minutes, from the README: in a clone of the repository,
the README's start command (read from the README, run as written) builds and
starts Wrenn; its curl walk-through (read from the README too) works with
the `export` lines the start command printed; a second start refuses and
leaves the first instance's sandbox running; no secret reaches the log.

The clone is kept in WRENN_TEST_CLONE (default /var/tmp/wrenn-readme-clone)
and brought to this repository's HEAD with `git checkout --force` and
`git clean -ffdx` on each run: its files are exactly a fresh clone's, and
git leaves the unchanged ones alone, so the release build is incremental
(minutes the first time, seconds afterwards). It builds into
CARGO_TARGET_DIR, like everything else. What is tested is the commit
checked out, not changes not yet committed.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from conftest import _free_port, _port_open

ROOT = Path(__file__).resolve().parents[2]
CLONE = Path(os.environ.get("WRENN_TEST_CLONE", "/var/tmp/wrenn-readme-clone"))
TEMPLATES = Path(os.environ.get("WRENN_TEST_TEMPLATES", "/var/tmp/wrenn-test-data/templates"))


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def start_command() -> str:
    """The line of the README's two commands whose comment says it starts Wrenn."""
    m = re.search(r"## The two commands.*?```sh\n(.*?)```", _readme(), re.S)
    assert m, "the README has no 'The two commands' block"
    for line in m.group(1).splitlines():
        cmd, _, comment = line.partition("#")
        if "start wrenn" in comment.lower():
            return cmd.strip()
    raise AssertionError("no line of the README's two commands says it starts Wrenn")


def walkthrough() -> str:
    m = re.search(r"<!-- walkthrough -->\s*```sh\n(.*?)```", _readme(), re.S)
    assert m, "the README has no walk-through block"
    return m.group(1)


def _git(*args: str, cwd: Path = CLONE) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def fresh_clone() -> Path:
    """CLONE at this repository's HEAD, with nothing else in it."""
    head = _git("rev-parse", "HEAD", cwd=ROOT)
    if not (CLONE / ".git").exists():
        subprocess.run(["rm", "-rf", str(CLONE)], check=True)
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(CLONE)], check=True)
    _git("fetch", "-q", "--force", str(ROOT), head)
    _git("checkout", "-q", "--force", "--detach", head)
    _git("clean", "-q", "-ffdx")
    assert _git("rev-parse", "HEAD") == head
    assert _git("status", "--porcelain") == ""
    return CLONE


class Started:
    """The start command, run in the clone with `env`; stopped with Ctrl-C
    (SIGINT) by pid, then killed with its process group if it lingers."""

    def __init__(self, clone: Path, env: dict, log: Path):
        self.log = log
        self.out = open(log, "w")
        self.proc = subprocess.Popen(
            ["bash", "-c", start_command()],
            cwd=clone,
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.out.close()


def _env(tmp: Path, name: str, port: int, log: str = "warn") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WRENN_", "E2B_"))}
    env.update(
        WRENN_PREFIX=str(tmp / "bin"),
        WRENN_DATA_DIR=str(tmp / name),
        WRENN_LISTEN=f"127.0.0.1:{port}",
        WRENN_CONFIG=str(tmp / f"{name}-cli.json"),
        WRENN_LOG=log,
        CARGO_TARGET_DIR=os.environ.get("CARGO_TARGET_DIR", "/var/tmp/wrenn-target"),
    )
    return env


def _cached_template(data: Path):
    """The data dir with the test's `base` template, as after a first start."""
    (data / "templates").mkdir(parents=True)
    (data / "templates" / "base").symlink_to(TEMPLATES / "base")


def test_the_readme_start_command_and_walkthrough_from_a_clone(tmp_path):
    if not (TEMPLATES / "base" / "rootfs" / "bin").exists():
        raise RuntimeError(f"no test template in {TEMPLATES}; run scripts/test.sh")
    clone = fresh_clone()
    port = _free_port()
    _cached_template(tmp_path / "first")
    # Logging everything: no secret may be in it.
    first = Started(clone, _env(tmp_path, "first", port, log="debug"), tmp_path / "first.log")
    sid = None
    try:
        # The first start may build everything in release mode.
        deadline = time.time() + 30 * 60
        while "Wrenn is up at" not in first.text():
            assert first.proc.poll() is None, "the start command failed:\n" + first.text()
            assert time.time() < deadline, "not up after 30 minutes:\n" + first.text()
            time.sleep(0.5)
        assert _port_open(port), "'up' was printed before the API listened"
        printed = first.text()
        exports = [l.strip() for l in printed.splitlines() if l.strip().startswith("export ")]
        assert any("WRENN_BASE_URL=" in l for l in exports) and any("E2B_API_KEY=" in l for l in exports), printed
        assert (tmp_path / "bin" / "wrenn").exists() and (tmp_path / "bin" / "envd").exists()

        # The walk-through, as pasted after the export lines, in a shell
        # that knows nothing else of Wrenn.
        script = "set -euo pipefail\n" + "\n".join(exports) + "\n" + walkthrough()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WRENN_", "E2B_"))}
        out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "hello from the sandbox" in out.stdout

        # Secrets stay out of the log, even at debug level: the key, the
        # admin's password and the other secrets are in files only root reads.
        secrets = {f: (tmp_path / "first" / f).read_text().strip() for f in ("api-key", "admin-password", "agent.token", "jwt.secret")}
        key = secrets["api-key"]
        assert key.startswith("wrn_")
        for f in [*secrets, "wrenn.db", "first-cli.json"]:
            path = tmp_path / "first" / f if f != "first-cli.json" else tmp_path / f
            assert path.stat().st_mode & 0o077 == 0, f
        logged = first.text()
        for f, secret in secrets.items():
            assert len(secret) >= 16 and secret not in logged, f"{f} is in the log"
        assert "\x1b[" not in logged, "colour codes in a log"

        # A sandbox that must outlive the second start.
        base = f"http://127.0.0.1:{port}"
        h = {"X-API-Key": key}
        r = httpx.post(f"{base}/v1/sandboxes", headers=h, json={"template": "base", "timeout_sec": 600}, timeout=60)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]

        # A second start (its own data dir and port): refuses, naming the first.
        port2 = _free_port()
        second = Started(clone, _env(tmp_path, "second", port2), tmp_path / "second.log")
        try:
            second.proc.wait(300)
        finally:
            second.stop()
        said = second.text()
        assert second.proc.returncode != 0, said
        assert "another Wrenn agent runs on this host" in said and str(tmp_path / "first") in said, said
        assert str(first.proc.pid) in said, said
        assert not _port_open(port2) and "Wrenn is up" not in said

        # The first instance's sandbox did not notice.
        r = httpx.post(f"{base}/v1/sandboxes/{sid}/exec", headers=h, json={"cmd": "echo", "args": ["still here"]}, timeout=60)
        assert r.status_code == 200 and r.json()["stdout"] == "still here\n", r.text
        assert httpx.get(f"{base}/v1/sandboxes/{sid}", headers=h).json()["status"] == "running"
    finally:
        first.stop()
    # Ctrl-C destroyed its sandboxes.
    assert first.proc.returncode == 0, first.text()
    left = list((tmp_path / "first" / "sandboxes").iterdir()) if (tmp_path / "first" / "sandboxes").exists() else []
    assert left == [], left
