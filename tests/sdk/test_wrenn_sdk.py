"""The `wrenn` Python SDK 0.3.0 from PyPI, unchanged, against `wrenn up`;
the README's curl walk-through; and team isolation on every route."""

import json
import os
import subprocess
import time

import httpx
import pytest


@pytest.fixture()
def wrenn_env(wrenn_up, monkeypatch):
    base, key, _ = wrenn_up
    monkeypatch.setenv("WRENN_API_KEY", key)
    monkeypatch.setenv("WRENN_BASE_URL", base)
    return base, key


def test_capsule_lifecycle_with_the_wrenn_sdk(wrenn_env):
    from wrenn import Capsule

    c = Capsule.create(template="base", wait=True)
    try:
        assert c.get_info().status == "running"
        r = c.commands.run("echo out; echo err >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 3)
        r = c.commands.run("pwd; echo $GREETING", cwd="/tmp", envs={"GREETING": "hi"})
        assert r.stdout == "/tmp\nhi\n"

        c.files.write("/work/a.txt", "hello")
        c.files.write("/work/b.bin", b"\x00\x01\x02")
        assert c.files.read("/work/a.txt") == "hello"
        assert c.files.read_bytes("/work/b.bin") == b"\x00\x01\x02"
        assert sorted(e.name for e in c.files.list("/work")) == ["a.txt", "b.bin"]
        made = c.files.make_dir("/work/sub")
        assert made.name == "sub" and made.type.value == "directory"
        c.files.remove("/work/sub")
        assert sorted(e.name for e in c.files.list("/work")) == ["a.txt", "b.bin"]

        assert c.capsule_id in [x.id for x in Capsule.list()]

        h = c.commands.run("sleep 300", background=True)
        assert h.pid in [p.pid for p in c.commands.list()]

        c.pause()
        assert c.get_info().status == "paused"
        c.resume()
        assert c.get_info().status == "running"
        assert c.commands.run("cat /work/a.txt").stdout == "hello"
        assert h.pid in [p.pid for p in c.commands.list()], "the background process survived pause"
    finally:
        c.destroy()
    assert c.capsule_id not in [x.id for x in Capsule.list()]


def test_another_team_sees_nothing(wrenn_up):
    base, key, _ = wrenn_up
    mine = httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60)
    sb = mine.post("/v1/sandboxes", json={"template": "base"}).json()
    sid = sb["id"]
    try:
        # Another user signs up: a new team, its own key.
        r = httpx.post(f"{base}/v1/auth/signup", json={"email": f"eve-{os.getpid()}@example.com", "password": "long enough pw"})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        other_key = httpx.post(f"{base}/v1/api-keys", headers={"Authorization": f"Bearer {token}"}, json={"name": "eve"}).json()["key"]
        theirs = httpx.Client(base_url=base, headers={"X-API-Key": other_key}, timeout=30)
        # Templates, but not which (shared) hosts have them: host ids are for admins.
        assert theirs.get("/v1/templates").json() == [{"name": "base", "type": "base", "hosts": []}]
        routes = [
            ("GET", f"/v1/sandboxes/{sid}", None),
            ("DELETE", f"/v1/sandboxes/{sid}", None),
            ("POST", f"/v1/sandboxes/{sid}/exec", {"cmd": "id"}),
            ("GET", f"/v1/sandboxes/{sid}/processes", None),
            ("DELETE", f"/v1/sandboxes/{sid}/processes/1", None),
            ("POST", f"/v1/sandboxes/{sid}/ping", None),
            ("POST", f"/v1/sandboxes/{sid}/pause", None),
            ("POST", f"/v1/sandboxes/{sid}/resume", None),
            ("GET", f"/v1/sandboxes/{sid}/metrics", None),
            ("POST", f"/v1/sandboxes/{sid}/files/read", {"path": "/etc/hostname"}),
            ("POST", f"/v1/sandboxes/{sid}/files/stream/read", {"path": "/etc/hostname"}),
            ("POST", f"/v1/sandboxes/{sid}/files/list", {"path": "/"}),
            ("POST", f"/v1/sandboxes/{sid}/files/mkdir", {"path": "/x"}),
            ("POST", f"/v1/sandboxes/{sid}/files/remove", {"path": "/etc"}),
            ("GET", f"/v1/capsules/{sid}", None),
        ]
        for method, path, body in routes:
            r = theirs.request(method, path, json=body)
            assert r.status_code == 404, f"{method} {path}: {r.status_code} {r.text}"
            assert r.json()["error"]["code"] == "not_found"
            assert sid not in r.text or "not found" in r.text
        r = theirs.post(f"/v1/sandboxes/{sid}/files/write", files={"file": ("f", b"x")}, data={"path": "/pwned"})
        assert r.status_code == 404
        # Keys, teams, members and the audit log of my team are out of reach too.
        my_key_id = mine.get("/v1/api-keys").json()["api_keys"][0]["id"]
        my_team = mine.get("/v1/teams").json()["teams"][0]["id"]
        for method, path, body in [
            ("DELETE", f"/v1/api-keys/{my_key_id}", None),
            ("GET", f"/v1/teams/{my_team}/members", None),
            ("POST", f"/v1/teams/{my_team}/members", {"email": "admin@localhost"}),
            ("DELETE", f"/v1/teams/{my_team}/members/usr-x", None),
        ]:
            r = theirs.request(method, path, json=body)
            assert r.status_code == 404, f"{method} {path}: {r.status_code} {r.text}"
        assert my_key_id not in theirs.get("/v1/api-keys").text
        assert my_team not in theirs.get("/v1/teams").text
        assert sid not in theirs.get("/v1/audit-logs").text
        assert mine.get("/v1/api-keys").status_code == 200, "my key still works"
        assert sid not in [s["id"] for s in theirs.get("/v1/sandboxes").json()]
        # And it is untouched.
        assert mine.get(f"/v1/sandboxes/{sid}").json()["status"] == "running"
        r = mine.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": "ls", "args": ["/pwned"]})
        assert r.json()["exit_code"] != 0
    finally:
        mine.delete(f"/v1/sandboxes/{sid}")


@pytest.mark.parametrize(
    "method, path, body, status, code",
    [
        ("POST", "/v1/sandboxes", {"vcpus": "two"}, 400, "invalid_request"),
        ("POST", "/v1/sandboxes", {"bogus": 1}, 400, "invalid_request"),
        ("POST", "/v1/sandboxes", {"template": "no-such-template"}, 400, "invalid_request"),
        ("POST", "/v1/sandboxes", {"memory_mb": 1}, 400, "invalid_request"),
        # Larger than any host: a 400 that says so, not a 503 "no room".
        ("POST", "/v1/sandboxes", {"memory_mb": 900000}, 400, "invalid_request"),
        ("GET", "/v1/sandboxes/sb-doesnotexist", None, 404, "not_found"),
        ("GET", "/v1/sandboxes?state=sideways", None, 400, "invalid_request"),
        ("POST", "/v1/sandboxes/sb-doesnotexist/exec", {"cmd": "true"}, 404, "not_found"),
        ("DELETE", "/v1/hosts/host-local?force=true", None, 409, "host_is_local"),
        # No such route, or not with this method: the same shape.
        ("GET", "/v1/no-such-route", None, 404, "not_found"),
        ("PUT", "/v1/sandboxes", None, 405, "method_not_allowed"),
    ],
)
def test_bad_input_gets_clear_errors(wrenn_up, method, path, body, status, code):
    base, key, _ = wrenn_up
    before = httpx.get(base + "/v1/sandboxes", headers={"X-API-Key": key}).json()
    r = httpx.request(method, base + path, json=body, headers={"X-API-Key": key}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    # A refused create leaves nothing behind to list, not even an error.
    after = httpx.get(base + "/v1/sandboxes", headers={"X-API-Key": key}).json()
    assert {s["id"] for s in after} <= {s["id"] for s in before}, after


def test_no_key_is_401(wrenn_up):
    base, _, _ = wrenn_up
    r = httpx.get(f"{base}/v1/sandboxes")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = httpx.get(f"{base}/v1/sandboxes", headers={"X-API-Key": "wrn_" + "0" * 32})
    assert r.status_code == 401


def test_cli_sandbox_and_key_commands(wrenn_up, tmp_path):
    from conftest import wrenn_binary

    base, key, data = wrenn_up
    env = {**os.environ, "WRENN_CONFIG": str(tmp_path / "cli.json"), "RUST_BACKTRACE": "0"}
    wrenn = str(wrenn_binary())

    def run(*args, check=True):
        r = subprocess.run([wrenn, *args], env=env, capture_output=True, text=True, timeout=120)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    assert "not logged in" in run("sandbox", "ls", check=False).stderr
    run("login", "--url", base, "--key", key)
    sid = run("sandbox", "create").stdout.strip()
    try:
        assert sid.startswith("sb-")
        listing = run("sandbox", "ls").stdout.splitlines()
        row = next(l for l in listing if l.startswith(sid))
        # Aligned: each header starts where its column's cells do.
        assert row.index("running") == listing[0].index("STATUS"), listing
        assert row.index("base") == listing[0].index("TEMPLATE"), listing
        # Templates as the control plane knows them; --local reads the disk.
        tpl = run("template", "ls").stdout.splitlines()
        assert tpl[0].split() == ["NAME", "HOSTS"] and tpl[1].split() == ["base", "host-local"], tpl
        local = run("--data-dir", str(data), "template", "ls", "--local").stdout.splitlines()
        assert local[1].split()[0] == "base", local
        r = run("template", "rm", "no-such-template", check=False)
        assert r.returncode == 1 and "no-such-template" in r.stderr and "not found" in r.stderr, r.stderr
        r = run("sandbox", "exec", sid, "--", "sh", "-c", "echo out; echo err >&2; exit 4", check=False)
        assert (r.stdout, r.stderr, r.returncode) == ("out\n", "err\n", 4)
        # Exit codes like a shell's for what cannot start.
        r = run("sandbox", "exec", sid, "--", "no-such-command", check=False)
        assert r.returncode == 127 and "no-such-command" in r.stderr, (r.returncode, r.stderr)
        r = run("sandbox", "exec", sid, "--", "/etc/hostname", check=False)
        assert r.returncode == 126, (r.returncode, r.stderr)
        # A shell fed from a pipe: it says so once, runs the lines, ends.
        r = subprocess.run([wrenn, "sandbox", "shell", sid], env=env, input="echo from-a-pipe\nexit 5\n",
                           capture_output=True, text=True, timeout=60)
        assert "from-a-pipe" in r.stdout and r.returncode == 5, (r.returncode, r.stdout, r.stderr)
        assert r.stderr.count("not a terminal") == 1 and "reset" not in r.stderr, r.stderr
        local = tmp_path / "in.txt"
        local.write_text("round trip")
        run("sandbox", "cp", str(local), f"{sid}:/root/in.txt")
        run("sandbox", "cp", f"{sid}:/root/in.txt", str(tmp_path / "out.txt"))
        assert (tmp_path / "out.txt").read_text() == "round trip"
        run("sandbox", "pause", sid)
        r = run("sandbox", "exec", sid, "--", "true", check=False)
        assert r.returncode == 1 and "paused" in r.stderr and "invalid_state" in r.stderr
        run("sandbox", "resume", sid)
        new_key = run("key", "create", "--name", "from-cli-with-a-name-longer-than-a-column").stdout.strip()
        assert new_key.startswith("wrn_")
        listing = run("key", "ls").stdout.splitlines()
        row = next(l for l in listing if "from-cli" in l)
        assert row.index("wrn_") == listing[0].index("KEY") and row.endswith("never"), listing
        import json

        keys = json.loads(run("key", "ls", "--json").stdout)
        kid = next(k["id"] for k in keys if k["name"].startswith("from-cli"))
        run("key", "rm", kid)
        assert "from-cli" not in run("key", "ls").stdout
    finally:
        run("sandbox", "rm", sid)
    r = run("sandbox", "exec", "sb-doesnotexist", "--", "true", check=False)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "not found" in r.stderr


def test_exec_stream_and_pty_over_websocket(wrenn_env):
    from wrenn import Capsule

    c = Capsule.create(template="base", wait=True)
    try:
        events = list(c.commands.stream("echo one; echo two >&2; exit 5"))
        kinds = [e.type for e in events]
        assert kinds[0] == "start" and kinds[-1] == "exit", kinds
        assert events[-1].exit_code == 5
        assert "one" in "".join(e.data for e in events if e.type == "stdout")
        assert "two" in "".join(e.data for e in events if e.type == "stderr")

        # A PTY: type into it, resize it, then drop the socket mid-session.
        with c.pty(cols=80, rows=24) as term:
            term.write(b"stty size; echo marker-$((40+2))\n")
            seen = b""
            for ev in term:
                if ev.type == "output":
                    seen += ev.data
                if b"marker-42" in seen:
                    break
            tag = term.tag
            assert b"24 80" in seen
            term.resize(cols=100, rows=30)
            # Leave without killing: the session must survive.
            term._ws.close()
            term.kill = lambda: None
        # Re-attach by tag and finish the session.
        with c.pty_connect(tag) as term:
            term.write(b"stty size; exit 7\n")
            seen = b""
            code = None
            for ev in term:
                if ev.type == "output":
                    seen += ev.data
                if ev.type == "exit":
                    code = ev.exit_code
                    break
            assert b"30 100" in seen and code == 7, (seen, code)
    finally:
        c.destroy()


def test_openapi_and_docs_are_served_from_the_binary(wrenn_up):
    base, _, _ = wrenn_up
    spec = httpx.get(f"{base}/openapi.yaml")
    assert spec.status_code == 200 and spec.text.startswith("openapi: 3.1")
    for path in ["/v1/sandboxes:", "/v1/sandboxes/{id}/exec:", "/v1/api-keys:", "/v1/auth/login:", "/v1/sandboxes/{id}/files/write:",
                 "/v1/hosts:", "/v1/hosts/register:", "/v1/sandboxes/{id}/public-ports:", "/v2/sandboxes:", "/v2/sandboxes/{id}/connect:"]:
        assert f"  {path}" in spec.text, path
    docs = httpx.get(f"{base}/docs/")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "unpkg" not in docs.text and "cdn" not in docs.text.lower(), "docs must not load assets from a CDN"
    assert httpx.get(f"{base}/docs/swagger-ui.css").status_code == 200


def test_reattach_to_a_background_process_and_events(wrenn_up, wrenn_env):
    import json
    import threading

    from wrenn import Capsule

    base, key, _ = wrenn_up
    events = []

    def listen():
        with httpx.stream("GET", f"{base}/v1/events/stream", headers={"X-API-Key": key}, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("event") == "capsule.destroy":
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    c = Capsule.create(template="base", wait=True)
    try:
        h = c.commands.run("for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.2; done", background=True)
        got = list(c.commands.connect(h.pid))
        assert got[-1].type == "exit" and got[-1].exit_code == 0
        assert "tick-6" in "".join(e.data for e in got if e.type == "stdout")
    finally:
        c.destroy()
    t.join(10)
    kinds = [(e.get("event"), e.get("capsule_id")) for e in events]
    assert ("connected", None) in kinds
    assert ("capsule.create", c.capsule_id) in kinds and ("capsule.destroy", c.capsule_id) in kinds


def test_cli_shell_and_logs(wrenn_up, tmp_path):
    """`wrenn sandbox shell` in a real terminal (a pty), and `sandbox logs`."""
    import pty
    import select
    import struct
    import fcntl
    import termios

    from conftest import wrenn_binary

    base, key, _ = wrenn_up
    env = {**os.environ, "WRENN_BASE_URL": base, "WRENN_API_KEY": key, "WRENN_CONFIG": str(tmp_path / "none.json"), "RUST_BACKTRACE": "0"}
    wrenn = str(wrenn_binary())
    sid = subprocess.run([wrenn, "sandbox", "create"], env=env, capture_output=True, text=True, check=True).stdout.strip()
    try:
        pid, fd = pty.fork()
        if pid == 0:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
            os.execve(wrenn, [wrenn, "sandbox", "shell", sid], env)
        out = b""
        sent = False
        deadline = time.time() + 20
        while time.time() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and b"reattach with" in out:
                os.write(fd, b"stty size; exit 3\n")
                sent = True
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 3, out
        assert b"33 111" in out, out

        h = httpx.post(f"{base}/v1/sandboxes/{sid}/exec", headers={"X-API-Key": key},
                       json={"cmd": "/bin/sh", "args": ["-c", "sleep 0.5; echo line-1; echo line-2; exit 2"], "background": True}).json()
        r = subprocess.run([wrenn, "sandbox", "logs", sid, str(h["pid"])], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "line-1\nline-2\n" in r.stdout, r
    finally:
        subprocess.run([wrenn, "sandbox", "rm", sid], env=env, capture_output=True)


def test_server_without_hosts_and_oversized_bodies(tmp_path):
    """`wrenn server` with no agent: creates answer 503 no_hosts_available;
    a JSON body over the limit answers 413; `server migrate` applies and exits."""
    from conftest import _free_port, _port_open, wrenn_binary

    wrenn = str(wrenn_binary())
    data = tmp_path / "server"
    r = subprocess.run([wrenn, "--data-dir", str(data), "server", "migrate"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "migrations applied (sqlite)" in r.stdout, r.stderr
    port = _free_port()
    proc = subprocess.Popen([wrenn, "--data-dir", str(data), "server", "--listen", f"127.0.0.1:{port}"],
                            env={**os.environ, "WRENN_LOG": "warn"})
    try:
        deadline = time.time() + 20
        while not _port_open(port):
            assert proc.poll() is None and time.time() < deadline, "wrenn server did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/v1/auth/signup", json={"email": "solo@example.com", "password": "long enough pw"}).json()["token"]
        key = httpx.post(f"{base}/v1/api-keys", headers={"Authorization": f"Bearer {token}"}).json()["key"]
        r = httpx.post(f"{base}/v1/sandboxes", headers={"X-API-Key": key}, json={"template": "base"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_hosts_available", r.text
        big = {"template": "base", "metadata": {"k": "x" * (3 << 20)}}
        r = httpx.post(f"{base}/v1/sandboxes", headers={"X-API-Key": key}, json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
        r = httpx.post(f"{base}/v1/auth/login", json={"email": "solo@example.com", "password": "wrong password"})
        assert r.status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_a_1gib_upload_streams_through_with_bounded_memory(wrenn_up):
    """1 GiB through files/stream/write and back: the control plane (with the
    agent in it) never holds the file; its RSS stays far below 1 GiB."""
    import threading

    base, key, data = wrenn_up
    up_pid = next(
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit() and os.path.exists(f"/proc/{p}/cmdline")
        and f"{data}\0up\0".encode() in open(f"/proc/{p}/cmdline", "rb").read()
    )
    h = {"X-API-Key": key}
    sid = httpx.post(f"{base}/v1/sandboxes", headers=h, json={"template": "base", "disk_size_mb": 2048}, timeout=60).json()["id"]
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mib(up_pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        size = 1 << 30
        boundary = "wrenn1gib"

        def body():
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/root/big.bin\r\n"
                   f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n"
                   "Content-Type: application/octet-stream\r\n\r\n").encode()
            chunk = b"w" * (1 << 20)
            for _ in range(size >> 20):
                yield chunk
            yield f"\r\n--{boundary}--\r\n".encode()

        r = httpx.post(f"{base}/v1/sandboxes/{sid}/files/stream/write", headers={**h, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                       content=body(), timeout=300)
        assert r.status_code == 200 and r.json()["size"] == size, r.text
        got = 0
        with httpx.stream("POST", f"{base}/v1/sandboxes/{sid}/files/stream/read", headers=h, json={"path": "/root/big.bin"}, timeout=300) as resp:
            for b in resp.iter_bytes():
                got += len(b)
        assert got == size
    finally:
        stop.set()
        t.join()
        httpx.delete(f"{base}/v1/sandboxes/{sid}", headers=h, timeout=60)
    assert 0 < peak[0] < 256, f"control plane RSS peaked at {peak[0]:.0f} MiB during a 1 GiB transfer"


def test_cli_host_commands(wrenn_up, tmp_path):
    """`wrenn host …` with `wrenn up`'s key (an admin's key may add hosts):
    create prints a one-time registration token, ls shows the pending host,
    token replaces it, tag sets tags, rm deletes; a member's key may not."""
    base, key, _ = wrenn_up
    wrenn = os.environ.get("WRENN_BIN", "wrenn")
    env = {**os.environ, "WRENN_BASE_URL": base, "WRENN_API_KEY": key, "WRENN_CONFIG": str(tmp_path / "none.json"), "RUST_BACKTRACE": "0"}

    def cli(*args, check=True):
        r = subprocess.run([wrenn, *args], env=env, capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    r = cli("host", "create", "--name", "edge-1", "--tag", "gpu")
    token = r.stdout.strip()
    assert token.startswith("wrh_"), r.stdout
    assert "wrenn agent" in r.stderr and "--register " + token in r.stderr
    hosts = json.loads(cli("host", "ls", "--json").stdout)
    host = [h for h in hosts if h["name"] == "edge-1"][0]
    assert (host["status"], host["tags"]) == ("pending", ["gpu"])
    assert "edge-1" in cli("host", "ls").stdout
    new = cli("host", "token", host["id"]).stdout.strip()
    assert new.startswith("wrh_") and new != token
    # The replaced token no longer registers anything.
    r = httpx.post(f"{base}/v1/hosts/register", json={"token": token, "address": "10.9.9.9:7070", "agent_token": "t" * 20})
    assert r.status_code == 401
    cli("host", "tag", host["id"], "gpu", "eu")
    assert [h for h in json.loads(cli("host", "ls", "--json").stdout) if h["id"] == host["id"]][0]["tags"] == ["gpu", "eu"]
    cli("host", "rm", host["id"])
    assert host["id"] not in cli("host", "ls").stdout
    r = cli("host", "rm", host["id"], check=False)
    assert r.returncode == 1 and "not found" in r.stderr

    # A member of another team cannot add shared hosts.
    email = f"m{time.time_ns()}@example.com"
    t = httpx.post(f"{base}/v1/auth/signup", json={"email": email, "password": "member-password"}).json()["token"]
    other = httpx.post(f"{base}/v1/api-keys", headers={"Authorization": f"Bearer {t}"}).json()["key"]
    r = subprocess.run([wrenn, "host", "create"], env={**env, "WRENN_API_KEY": other}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "admins" in r.stderr
