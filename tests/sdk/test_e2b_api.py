"""The official `e2b` SDK from PyPI, unchanged, against `wrenn up`: the E2B
REST API at E2B_API_URL and envd through the sandbox proxy at
E2B_SANDBOX_URL. And the proxy itself: a web server and a WebSocket echo
server inside a sandbox, reached by Host header, refused without a key."""

import base64
import hashlib
import os
import socket
import struct
import threading
import time
import uuid

import httpx
import pytest
from e2b import CommandExitException, NotFoundException, Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import SandboxNotRunningException
from e2b.sandbox.commands.command_handle import PtySize
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType


@pytest.fixture()
def e2b_env(wrenn_up, monkeypatch):
    """E2B's SDK pointed at Wrenn with an `e2b_…` key of the admin's team."""
    base, key, _ = wrenn_up
    r = httpx.post(f"{base}/v1/api-keys", headers={"X-API-Key": key}, json={"name": "e2b", "format": "e2b"})
    assert r.status_code == 201, r.text
    e2b_key = r.json()["key"]
    assert e2b_key.startswith("e2b_") and len(e2b_key) == 44
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.setenv("E2B_API_URL", base)
    monkeypatch.setenv("E2B_SANDBOX_URL", base)
    monkeypatch.setenv("E2B_API_KEY", e2b_key)
    return base, e2b_key


def _until(pred, timeout=10.0, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return pred()


def test_e2b_sdk_lifecycle_against_wrenn(e2b_env):
    case = uuid.uuid4().hex[:8]
    sbx = Sandbox.create("base", timeout=120, metadata={"suite": "e2b", "case": case}, envs={"GREETING": "hi"})
    try:
        # Commands, with the sandbox's env.
        r = sbx.commands.run("echo $GREETING; echo oops >&2")
        assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "oops\n", 0)
        with pytest.raises(CommandExitException) as err:
            sbx.commands.run("exit 7")
        assert err.value.exit_code == 7

        # A background command: connect to it from elsewhere, then kill it.
        h = sbx.commands.run("for i in $(seq 1 1000); do echo tick $i; sleep 0.05; done", background=True)
        seen = []
        again = sbx.commands.connect(h.pid)
        got = threading.Event()
        t = threading.Thread(
            target=lambda: _swallow(lambda: again.wait(on_stdout=lambda s: (seen.append(s), got.set()))),
            daemon=True,
        )
        t.start()
        assert got.wait(10), "no output through connect"
        assert sbx.commands.kill(h.pid) is True
        t.join(10)
        assert any("tick" in s for s in seen)
        assert h.pid not in [p.pid for p in sbx.commands.list()]

        # Files: write, read, list, watch.
        sbx.files.make_dir("/tmp/w")
        w = sbx.files.watch_dir("/tmp/w")
        try:
            sbx.files.write("/tmp/w/a.txt", "hello")
            sbx.files.write("/tmp/w/b.bin", b"\x00\x01\x02")
            events = []
            _until(lambda: events.extend(w.get_new_events()) or ("b.bin", FilesystemEventType.WRITE) in [(e.name, e.type) for e in events])
        finally:
            w.stop()
        assert ("a.txt", FilesystemEventType.CREATE) in [(e.name, e.type) for e in events]
        assert sbx.files.read("/tmp/w/a.txt") == "hello"
        assert bytes(sbx.files.read("/tmp/w/b.bin", format="bytes")) == b"\x00\x01\x02"
        assert sorted(e.name for e in sbx.files.list("/tmp/w")) == ["a.txt", "b.bin"]

        # A PTY.
        out = []
        p = sbx.pty.create(PtySize(rows=24, cols=80))
        sbx.pty.send_stdin(p.pid, b"stty size; echo pty-$((40+2)); exit 3\n")
        with pytest.raises(CommandExitException):
            p.wait(on_pty=out.append)
        text = b"".join(out).decode(errors="replace")
        assert "24 80" in text and "pty-42" in text, text

        # Info, list (by metadata), timeout, metrics.
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id == "base"
        assert info.state.value == "running"
        assert info.metadata == {"suite": "e2b", "case": case}
        listed = Sandbox.list(query=SandboxQuery(metadata={"case": case})).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        assert Sandbox.list(query=SandboxQuery(metadata={"case": "no-such"})).next_items() == []
        sbx.set_timeout(300)
        assert sbx.get_info().end_at.timestamp() > time.time() + 250
        m = sbx.get_metrics()
        assert m and m[-1].mem_total > 0 and m[-1].cpu_count == 1

        # Pause, then connect: the files and a running process are still there.
        sbx.files.write("/tmp/keep.txt", "kept")
        bg = sbx.commands.run("sleep 600", background=True)
        assert sbx.beta_pause() is True
        assert sbx.get_info().state.value == "paused"
        assert Sandbox.list(query=SandboxQuery(metadata={"case": case}, state=[SandboxState.PAUSED])).next_items()[0].sandbox_id == sbx.sandbox_id
        back = Sandbox.connect(sbx.sandbox_id)
        assert back.get_info().state.value == "running"
        assert back.files.read("/tmp/keep.txt") == "kept"
        assert bg.pid in [p.pid for p in back.commands.list()]
        assert back.commands.run("echo after").stdout == "after\n"
    finally:
        sbx.kill()
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    assert Sandbox.list(query=SandboxQuery(metadata={"case": case})).next_items() == []


def _swallow(f):
    try:
        f()
    except Exception:
        pass


def test_e2b_rest_errors_and_paging(e2b_env, wrenn_up):
    base, key = e2b_env
    h = {"X-API-Key": key}
    r = httpx.get(f"{base}/sandboxes/sb-nosuch", headers=h)
    assert r.status_code == 404 and r.json()["code"] == 404 and "sb-nosuch" in r.json()["message"]
    r = httpx.post(f"{base}/v2/sandboxes", headers={"X-API-Key": "e2b_" + "0" * 40}, json={"templateID": "base"})
    assert r.status_code == 401 and r.json()["code"] == 401
    r = httpx.post(f"{base}/v2/sandboxes", headers=h, json={"templateID": "no-such-template"})
    assert r.status_code == 400 and "no-such-template" in r.json()["message"], r.text
    r = httpx.post(f"{base}/v2/sandboxes", headers=h, content=b"{not json", )
    assert r.status_code == 400 and r.json()["code"] == 400
    r = httpx.get(f"{base}/v2/sandboxes?state=bogus", headers=h)
    assert r.status_code == 400
    # No such route, or not with this method: E2B's shape too.
    r = httpx.get(f"{base}/v2/no-such-route", headers=h)
    assert r.status_code == 404 and r.json()["code"] == 404 and "error" not in r.json(), r.text
    r = httpx.put(f"{base}/sandboxes", headers=h)
    assert r.status_code == 405 and r.json()["code"] == 405 and r.json()["message"], r.text

    tag = uuid.uuid4().hex[:8]
    ids = []
    try:
        for _ in range(3):
            r = httpx.post(f"{base}/v2/sandboxes", headers=h, json={"templateID": "base", "timeout": 60, "metadata": {"page": tag}})
            assert r.status_code == 201, r.text
            body = r.json()
            assert set(body) >= {"templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken", "domain"}
            ids.append(body["sandboxID"])
        seen, token = [], None
        for _ in range(5):
            q = {"metadata": f"page={tag}", "limit": 2}
            if token:
                q["nextToken"] = token
            r = httpx.get(f"{base}/v2/sandboxes", headers=h, params=q)
            assert r.status_code == 200
            seen += [s["sandboxID"] for s in r.json()]
            token = r.headers.get("x-next-token")
            if not token:
                break
        assert sorted(seen) == sorted(ids)
        # The last sandbox of a page killed before the next page is asked
        # for: the next page goes on after it all the same.
        q = {"metadata": f"page={tag}", "limit": 2}
        r = httpx.get(f"{base}/v2/sandboxes", headers=h, params=q)
        first = [s["sandboxID"] for s in r.json()]
        token = r.headers["x-next-token"]
        assert httpx.delete(f"{base}/sandboxes/{first[-1]}", headers=h).status_code == 204
        ids.remove(first[-1])
        r = httpx.get(f"{base}/v2/sandboxes", headers=h, params={**q, "nextToken": token})
        assert r.status_code == 200, r.text
        assert [s["sandboxID"] for s in r.json()] == [i for i in ids if i not in first]
        # Pause twice: 409 the second time; connect resumes (201), then 200.
        assert httpx.post(f"{base}/sandboxes/{ids[0]}/pause", headers=h).status_code == 204
        assert httpx.post(f"{base}/sandboxes/{ids[0]}/pause", headers=h).status_code == 409
        assert httpx.post(f"{base}/v2/sandboxes/{ids[0]}/connect", headers=h, json={"timeout": 60}).status_code == 201
        assert httpx.post(f"{base}/v2/sandboxes/{ids[0]}/connect", headers=h, json={"timeout": 60}).status_code == 200
    finally:
        for i in ids:
            assert httpx.delete(f"{base}/sandboxes/{i}", headers=h).status_code == 204
    assert httpx.delete(f"{base}/sandboxes/{ids[0]}", headers=h).status_code == 404


# ---- the proxy

WS_ECHO = r'''
import base64, hashlib, socket, struct, threading, time
def serve(c):
    req = b""
    while b"\r\n\r\n" not in req:
        req += c.recv(4096)
    keys = [l.split(b":", 1)[1].strip() for l in req.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")]
    if not keys and req.startswith(b"GET /events"):  # server-sent events, 0.3 s apart
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        for i in range(3):
            c.sendall(b"data: tick %d\n\n" % i)
            time.sleep(0.3)
        c.close()
        return
    if not keys and req.startswith(b"GET /fail"):  # an app's own 502, dressed as the proxy's
        out = b'{"code":"port_not_open","message":"the app says so"}'
        c.sendall(b"HTTP/1.1 502 Bad Gateway\r\nx-wrenn-proxy-error: port_not_open\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(out) + out)
        c.close()
        return
    if not keys:  # plain HTTP: answer with the request's head and the body's SHA-256
        head, body = req.split(b"\r\n\r\n", 1)
        n = [int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
        digest = hashlib.sha256()
        digest.update(body)
        left = (n[0] if n else 0) - len(body)
        while left > 0:
            chunk = c.recv(min(left, 1 << 16))
            if not chunk: break
            digest.update(chunk)
            left -= len(chunk)
        out = head + b"\r\n\r\nsha256=" + digest.hexdigest().encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(out) + out)
        c.close()
        return
    key = keys[0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    while True:
        h = c.recv(2)
        if len(h) < 2: return
        n = h[1] & 0x7f
        if n == 126: n = struct.unpack(">H", c.recv(2))[0]
        mask = c.recv(4)
        data = b""
        while len(data) < n: data += c.recv(n - len(data))
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        if h[0] & 0x0f == 8: return
        out = b"echo " + data
        c.sendall(bytes([0x81, len(out)]) + out)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8765)); s.listen()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


def _ws_echo(base: str, host: str, headers: dict, text: bytes) -> bytes:
    """A WebSocket round trip through the proxy, by hand (stdlib only)."""
    addr = httpx.URL(base)
    s = socket.create_connection((addr.host, addr.port), timeout=10)
    try:
        key = base64.b64encode(os.urandom(16))
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key.decode()}\r\n{extra}\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        head, rest = head.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        want = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        assert want in head
        mask = os.urandom(4)
        s.sendall(bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text)))
        got = rest
        while len(got) < 2 or len(got) < 2 + got[1]:
            got += s.recv(4096)
        return got[2 : 2 + got[1]]
    finally:
        s.close()


def test_proxy_reaches_http_and_websocket_servers_in_a_sandbox(wrenn_up):
    base, key, _ = wrenn_up
    h = {"X-API-Key": key}
    r = httpx.post(f"{base}/v1/sandboxes", headers=h, json={"template": "base", "timeout_sec": 300})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    port = httpx.URL(base).port
    try:
        def run(cmd, background=False):
            r = httpx.post(f"{base}/v1/sandboxes/{sid}/exec", headers=h, json={"cmd": "/bin/sh", "args": ["-c", cmd], "background": background}, timeout=30)
            assert r.status_code == 200, r.text
            return r.json()

        run("mkdir -p /srv && echo 'hello from the sandbox' > /srv/index.html")
        run("cd /srv && exec python3 -m http.server 8000", background=True)
        run("cd /srv && exec python3 -m http.server 8001 --bind 127.0.0.1", background=True)
        httpx.post(f"{base}/v1/sandboxes/{sid}/files/write", headers=h, data={"path": "/srv/ws.py"}, files={"file": ("ws.py", WS_ECHO.encode())}).raise_for_status()
        run("exec python3 /srv/ws.py", background=True)

        def get(p, headers, path="/index.html"):
            return httpx.get(f"{base}{path}", headers={"Host": f"{p}-{sid}.localhost:{port}", **headers}, timeout=10)

        # A server on 0.0.0.0, and one on 127.0.0.1 (envd forwards it).
        for p in (8000, 8001):
            r = _until(lambda: (lambda r: r if r.status_code == 200 else None)(get(p, h)), timeout=15)
            assert r is not None and r.text == "hello from the sandbox\n", f"port {p}"
        # Without credentials: refused; with another team's key: not found.
        r = get(8000, {})
        assert r.status_code == 401 and "private" in r.json()["error"]["message"]
        r = get(8000, {"X-API-Key": "wrn_" + "0" * 32})
        assert r.status_code == 404
        r = get(8000, {"e2b-traffic-access-token": "wrong"})
        assert r.status_code == 403
        # The E2B headers name the sandbox and port as well as the Host does.
        r = httpx.get(f"{base}/index.html", headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "8000", **h})
        assert r.status_code == 200 and r.text == "hello from the sandbox\n"
        # The proxy's own errors come in the caller's API family: native
        # ({"error": {code, message}}) unless E2B's headers are sent (E2B's
        # {code: <status>, message, sandboxId, port}).
        e2b = {"e2b-traffic-access-token": httpx.get(f"{base}/v1/sandboxes/{sid}", headers=h).json()["traffic_token"]}
        for p, headers, status, code in [
            (8999, h, 502, "port_not_open"),  # nothing listens there
            (8999, e2b, 502, "port_not_open"),
            (8000, {}, 401, "unauthorized"),
            (8000, {"e2b-traffic-access-token": "wrong"}, 403, "forbidden"),
            (8000, {"X-API-Key": "wrn_" + "0" * 32}, 404, "not_found"),
        ]:
            r = get(p, headers)
            assert r.status_code == status, (p, headers, r.text)
            body = r.json()
            if any(k.lower() in ("x-access-token", "e2b-traffic-access-token") for k in headers):
                assert body["code"] == status and body["sandboxId"] == sid and body["port"] == p, body
                assert "error" not in body
            else:
                assert body["error"]["code"] == code and body["error"]["message"], body
        r = get(8999, h)
        assert "8999" in r.json()["error"]["message"], r.text
        # An unknown sandbox: 404 natively, E2B's 502 to E2B's clients
        # (which read it as "not running").
        for headers, status in [(h, 404), ({"E2b-Sandbox-Id": "sb-nosuch", **e2b}, 502)]:
            r = httpx.get(f"{base}/", headers={"Host": f"8000-sb-nosuch.localhost:{port}", **headers})
            assert r.status_code == status, r.text
            body = r.json()
            assert (body["error"]["code"] == "not_found") if status == 404 else (body["code"] == 502 and body["sandboxId"] == "sb-nosuch")
        # A browser's first visit keeps its cookie even when nothing listens yet.
        r = get(8999, {}, path=f"/?wrenn_traffic_token={e2b['e2b-traffic-access-token']}")
        assert r.status_code == 502 and r.json()["error"]["code"] == "port_not_open", r.text
        assert r.headers.get("set-cookie", "").startswith("wrenn-traffic-token="), r.headers
        # What the app answers passes untouched, even when it looks like ours.
        r = _until(lambda: _try(lambda: get(8765, h, path="/fail")), timeout=15)
        assert r.status_code == 502 and r.json() == {"code": "port_not_open", "message": "the app says so"}
        assert "x-wrenn-proxy-error" not in r.headers
        # The app sees the Host the client used, never the credentials.
        r = _until(lambda: _try(lambda: get(8765, {**h, "Authorization": "Bearer app-token"}, path="/headers")), timeout=15)
        assert r is not None and r.status_code == 200
        seen = r.text.lower()
        assert f"host: 8765-{sid}.localhost:{port}".lower() in seen
        assert "authorization: bearer app-token" in seen
        assert "x-api-key" not in seen and "x-wrenn-agent-token" not in seen and key.lower() not in seen
        # WebSocket through the proxy, to a server bound to 127.0.0.1 inside.
        got = _until(lambda: _try(lambda: _ws_echo(base, f"8765-{sid}.localhost:{port}", h, b"ping")), timeout=15)
        assert got == b"echo ping"
        # Server-sent events arrive as they are sent, not at the end.
        t0 = time.time()
        arrivals = []
        with httpx.stream("GET", f"{base}/events", headers={"Host": f"8765-{sid}.localhost:{port}", **h}, timeout=10) as r:
            assert r.headers["content-type"] == "text/event-stream"
            for line in r.iter_lines():
                if line.startswith("data:"):
                    arrivals.append((line, time.time() - t0))
        assert [a[0] for a in arrivals] == ["data: tick 0", "data: tick 1", "data: tick 2"]
        assert arrivals[0][1] < arrivals[2][1] - 0.4, arrivals
        # A large upload streams through to the app, whole.
        blob = os.urandom(64 << 20)
        r = httpx.put(f"{base}/upload", headers={"Host": f"8765-{sid}.localhost:{port}", **h}, content=blob, timeout=60)
        assert r.status_code == 200 and r.text.endswith("sha256=" + hashlib.sha256(blob).hexdigest())
        # A public port needs no credentials; the others still do.
        r = httpx.put(f"{base}/v1/sandboxes/{sid}/public-ports", headers=h, json={"ports": [8000]})
        assert r.status_code == 200 and r.json()["public_ports"] == [8000]
        assert get(8000, {}).status_code == 200
        assert get(8001, {}).status_code == 401
        # The traffic token opens every port.
        traffic = httpx.get(f"{base}/v1/sandboxes/{sid}", headers=h).json()["traffic_token"]
        assert get(8001, {"e2b-traffic-access-token": traffic}).status_code == 200
        # A browser: the token in the URL once, then a cookie for that host name.
        r = get(8001, {}, path=f"/index.html?wrenn_traffic_token={traffic}")
        assert r.status_code == 200 and r.text == "hello from the sandbox\n"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"wrenn-traffic-token={traffic};") and "HttpOnly" in cookie
        assert get(8001, {"Cookie": f"wrenn-traffic-token={traffic}"}).status_code == 200
        r = get(8765, {"Cookie": f"theme=dark; wrenn-traffic-token={traffic}"}, path=f"/headers?a=1&wrenn_traffic_token={traffic}")
        assert r.status_code == 200 and "theme=dark" in r.text and traffic not in r.text, r.text
        assert "get /headers?a=1 " in r.text.lower()
        assert get(8001, {}, path="/index.html?wrenn_traffic_token=wrong").status_code == 403
        assert httpx.put(f"{base}/v1/sandboxes/{sid}/public-ports", headers=h, json={"ports": [0]}).status_code == 400
        assert httpx.put(f"{base}/v1/sandboxes/{sid}/public-ports", headers=h, json={"ports": []}).status_code == 200
        assert get(8000, {}).status_code == 401
        # Paused: traffic resumes it.
        assert httpx.post(f"{base}/v1/sandboxes/{sid}/pause", headers=h).status_code == 200
        r = get(8000, h)
        assert r.status_code == 200 and r.text == "hello from the sandbox\n"
        assert httpx.get(f"{base}/v1/sandboxes/{sid}", headers=h).json()["status"] == "running"
    finally:
        assert httpx.delete(f"{base}/v1/sandboxes/{sid}", headers=h).status_code == 204
    r = get(8000, h)
    assert r.status_code == 404


def _try(f):
    try:
        return f()
    except Exception:
        return None


def test_e2b_auto_pause_at_the_timeout(e2b_env):
    """`on_timeout: pause` (E2B's autoPause): the timeout pauses instead of
    killing; connect brings it back with its files."""
    sbx = Sandbox.create("base", timeout=2, lifecycle={"on_timeout": "pause"})
    try:
        sbx.files.write("/tmp/survives.txt", "yes")
        assert _until(lambda: sbx.get_info().state.value == "paused", timeout=15), "not paused at the timeout"
        back = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert back.get_info().state.value == "running"
        assert back.files.read("/tmp/survives.txt") == "yes"
    finally:
        sbx.kill()


def test_e2b_paused_and_killed_sandboxes_are_not_running(e2b_env):
    """As on E2B: traffic does not resume a paused sandbox unless it was
    made with `auto_resume`, so `is_running()` says False for a paused
    sandbox (and leaves it paused) and for a killed one, from the proxy's
    502 `{sandboxId, message, code}`; connect resumes it."""
    base, key = e2b_env
    # A route of E2B's that Wrenn lacks answers in E2B's shape too.
    r = httpx.get(f"{base}/snapshots", headers={"X-API-Key": key})
    assert r.status_code == 404 and r.json()["code"] == 404 and r.json()["message"], r.text
    sbx = Sandbox.create("base", timeout=120)
    try:
        assert sbx.is_running() is True
        assert sbx.get_info().lifecycle == {"on_timeout": "kill", "auto_resume": False}
        assert sbx.pause() is True
        assert sbx.is_running() is False
        assert sbx.get_info().state.value == "paused", "the probe resumed it"
        with pytest.raises(SandboxNotRunningException):
            sbx.commands.run("true")
        r = httpx.get(f"{base}/health", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983", "X-Access-Token": sbx._envd_access_token or ""})
        assert r.status_code == 502, r.text
        body = r.json()
        assert body["code"] == 502 and body["sandboxId"] == sbx.sandbox_id and "paused" in body["message"], body
        back = Sandbox.connect(sbx.sandbox_id)
        assert back.is_running() is True
        assert back.commands.run("echo back").stdout == "back\n"
        # A connect only extends: a shorter timeout leaves the longer one.
        Sandbox.connect(sbx.sandbox_id, timeout=10)
        assert sbx.get_info().end_at.timestamp() > time.time() + 60
    finally:
        sbx.kill()
    assert sbx.is_running() is False
    # What a killed sandbox's SDK object says when it is used: not running.
    with pytest.raises(SandboxNotRunningException):
        sbx.commands.run("true")

    # No timeout given: E2B's documented 5 minutes.
    plain = Sandbox.create("base")
    try:
        left = plain.get_info().end_at.timestamp() - time.time()
        assert 240 < left <= 301, left
    finally:
        plain.kill()

    # Made with auto_resume: traffic resumes it.
    auto = Sandbox.create("base", timeout=120, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        assert auto.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": True}
        assert auto.pause() is True
        assert auto.commands.run("echo woke").stdout == "woke\n"
        assert auto.get_info().state.value == "running"
    finally:
        auto.kill()


def test_e2b_listing_orders_and_filters(e2b_env):
    """`Sandbox.list`: newest first by default, `order="asc"` oldest
    first, and the `started_after` and `template` filters."""
    case = uuid.uuid4().hex[:8]
    a = Sandbox.create("base", timeout=120, metadata={"case": case})
    time.sleep(1.2)  # startedAt has whole seconds
    b = Sandbox.create("base", timeout=120, metadata={"case": case})
    try:
        def ids(query=None, **kw):
            q = query or SandboxQuery(metadata={"case": case})
            return [s.sandbox_id for s in Sandbox.list(query=q, **kw).next_items()]

        assert ids() == [b.sandbox_id, a.sandbox_id]
        assert ids(order="asc") == [a.sandbox_id, b.sandbox_id]
        assert ids(order="desc") == [b.sandbox_id, a.sandbox_id]
        since = b.get_info().started_at
        assert ids(SandboxQuery(metadata={"case": case}, started_after=since)) == [b.sandbox_id]
        assert ids(SandboxQuery(metadata={"case": case}, template="base")) == [b.sandbox_id, a.sandbox_id]
        assert ids(SandboxQuery(metadata={"case": case}, template="nope")) == []
    finally:
        a.kill()
        b.kill()


def test_e2b_sandboxes_run_as_user_with_sudo(e2b_env, wrenn_up):
    """As on E2B: commands and file calls that name no user run as `user`
    in /home/user, whose `sudo` needs no password; `python` is Python 3;
    relative paths start at the home and written files belong to `user`.
    The native API keeps root (the `wrenn` SDK's default)."""
    sbx = Sandbox.create("base", timeout=120)
    try:
        r = sbx.commands.run("whoami; pwd; echo $HOME")
        assert r.stdout == "user\n/home/user\n/home/user\n"
        r = sbx.commands.run("sudo -n id -u")
        assert (r.stdout, r.stderr) == ("0\n", ""), r
        assert sbx.commands.run("python --version").stdout.startswith("Python 3.")
        info = sbx.files.write("notes.txt", "hi")
        assert info.path == "/home/user/notes.txt"
        entry = sbx.files.get_info("notes.txt")
        assert (entry.owner, entry.group) == ("user", "user")
        assert [e.name for e in sbx.files.list(".") if e.name == "notes.txt"] == ["notes.txt"]
        assert sbx.commands.run("cat ~/notes.txt").stdout == "hi"
        with pytest.raises(CommandExitException):
            sbx.commands.run("touch /etc/owned-by-root")
        sbx.commands.run("sudo touch /etc/owned-by-root")
        assert sbx.commands.run("whoami", user="root").stdout == "root\n"
        assert sbx.files.get_info("/etc/owned-by-root", user="root").owner == "root"
    finally:
        sbx.kill()

    base, key, _ = wrenn_up
    h = {"X-API-Key": key}
    r = httpx.post(f"{base}/v1/sandboxes", headers=h, json={"template": "base"}, timeout=60)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        r = httpx.post(f"{base}/v1/sandboxes/{sid}/exec", headers=h, json={"cmd": "sh", "args": ["-c", "whoami; pwd"]}, timeout=60)
        assert r.status_code == 200 and r.json()["stdout"] == "root\n/root\n", r.text
    finally:
        httpx.delete(f"{base}/v1/sandboxes/{sid}", headers=h, timeout=60)


def test_e2b_timeout_zero_ends_the_sandbox_now(e2b_env):
    """`set_timeout(0)` is accepted, as E2B's: the sandbox's time is up at
    once, so it is killed, or paused when made with `on_timeout: pause`."""
    sbx = Sandbox.create("base", timeout=120)
    sbx.set_timeout(0)
    assert sbx.is_running() is False
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    kept = Sandbox.create("base", timeout=120, lifecycle={"on_timeout": "pause"})
    try:
        kept.set_timeout(0)
        assert kept.get_info().state.value == "paused"
    finally:
        kept.kill()


def test_e2b_file_metadata(e2b_env):
    """Upload metadata (`X-Metadata-*`) is kept as `user.e2b.*` extended
    attributes: the write's answer, `get_info`, `list` and `rename` show
    it, keys lower-cased; attributes set inside the sandbox show too; a
    file without any has none; an upload with metadata replaces the
    file's; a value that is not printable ASCII is refused."""
    base, _ = e2b_env
    sbx = Sandbox.create("base", timeout=120)
    try:
        want = {"owner": "ann", "kind": "note"}
        w = sbx.files.write("/tmp/m.txt", "x", metadata={"Owner": "ann", "kind": "note"})
        assert w.metadata == want
        assert sbx.files.get_info("/tmp/m.txt").metadata == want
        assert {e.name: e.metadata for e in sbx.files.list("/tmp")}["m.txt"] == want
        streamed = sbx.files.write("/tmp/s.bin", iter([b"ab", b"cd"]), metadata={"k": "v"})
        assert streamed.metadata == {"k": "v"} and sbx.files.read("/tmp/s.bin") == "abcd"
        sbx.commands.run("python -c \"import os; os.setxattr('/tmp/m.txt', 'user.e2b.extra', b'1')\"")
        assert sbx.files.get_info("/tmp/m.txt").metadata == {**want, "extra": "1"}
        assert sbx.files.rename("/tmp/m.txt", "/tmp/n.txt").metadata == {**want, "extra": "1"}
        assert sbx.files.write("/tmp/n.txt", "y", metadata={"only": "this"}).metadata == {"only": "this"}
        # As E2B's: an upload is the file's whole metadata, so none clears it.
        assert sbx.files.write("/tmp/n.txt", "z").metadata is None
        assert sbx.files.get_info("/tmp/n.txt").metadata is None
        from e2b.sandbox.filesystem.filesystem import WriteEntry
        many = sbx.files.write_files([WriteEntry(path="/tmp/m1", data="1"), WriteEntry(path="/tmp/m2", data="2")], metadata={"batch": "7"})
        assert [(w.path, w.metadata) for w in many] == [("/tmp/m1", {"batch": "7"}), ("/tmp/m2", {"batch": "7"})]
        sbx.files.write("/tmp/plain.txt", "y")
        assert sbx.files.get_info("/tmp/plain.txt").metadata is None
        r = httpx.post(
            f"{base}/files",
            params={"path": "/tmp/bad.txt"},
            headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983",
                     "X-Access-Token": sbx._envd_access_token or "", "Content-Type": "application/octet-stream",
                     "X-Metadata-k": b"caf\xc3\xa9"},
            content=b"z",
        )
        assert r.status_code == 400 and "printable" in r.text, r.text
    finally:
        sbx.kill()


def test_e2b_metrics_over_a_range_and_of_many(e2b_env):
    """`get_metrics(start=, end=)` answers the agent's samples (every 5 s)
    in the range, oldest first, plus one taken now when the range reaches
    now; a range in the past before the sandbox has none; the batch route
    `GET /sandboxes/metrics?sandbox_ids=` answers the newest of each of the
    caller's running sandboxes and leaves others out."""
    import datetime

    base, key = e2b_env
    a = Sandbox.create("base", timeout=120)
    b = Sandbox.create("base", timeout=120)
    try:
        began = datetime.datetime.now(datetime.timezone.utc)
        a.commands.run("head -c 30000000 /dev/zero > /tmp/fill")
        time.sleep(11)  # two sampling periods at least
        all_ = a.get_metrics()
        assert len(all_) >= 3, all_
        stamps = [m.timestamp for m in all_]
        assert stamps == sorted(stamps)
        assert all(m.cpu_count == 1 and m.mem_total > 0 and m.disk_total > 0 for m in all_)
        assert all_[-1].disk_used >= 30_000_000, all_[-1]
        assert abs(all_[-1].timestamp.timestamp() - time.time()) < 3
        # From the second sample on: the first is left out.
        recent = a.get_metrics(start=all_[1].timestamp, end=datetime.datetime.now(datetime.timezone.utc))
        assert recent[0].timestamp == all_[1].timestamp, (recent, all_)
        assert all(m.timestamp >= all_[1].timestamp for m in recent)
        old = a.get_metrics(start=began - datetime.timedelta(hours=2), end=began - datetime.timedelta(hours=1))
        assert old == []
        r = httpx.get(f"{base}/sandboxes/{a.sandbox_id}/metrics", params={"start": 10, "end": 5}, headers={"X-API-Key": key})
        assert r.status_code == 400 and r.json()["code"] == 400, r.text

        b.pause()
        r = httpx.get(f"{base}/sandboxes/metrics", params={"sandbox_ids": f"{a.sandbox_id},{b.sandbox_id},sb-nothere"}, headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        got = r.json()["sandboxes"]
        assert list(got) == [a.sandbox_id], got
        assert got[a.sandbox_id]["memTotal"] > 0 and got[a.sandbox_id]["timestampUnix"] > 0
        r = httpx.get(f"{base}/sandboxes/metrics", headers={"X-API-Key": key})
        assert r.status_code == 400 and r.json()["code"] == 400, r.text
    finally:
        a.kill()
        b.kill()


@pytest.fixture()
def public_servers():
    """Two web servers at public-looking addresses (TEST-NET-3:
    203.0.113.2 and .3, port 8000) in a network namespace of their own,
    routed from the host: what a sandbox reaches through its NAT as it
    would the internet. Removed, with their processes, whatever happens."""
    import subprocess
    import sys

    tag = uuid.uuid4().hex[:8]
    ns, host_if, peer = f"wt{tag}", f"wth{tag}", f"wtp{tag}"
    addrs = ["203.0.113.2", "203.0.113.3"]

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    procs = []
    try:
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", ns)
        ip("addr", "add", "203.0.113.1/29", "dev", host_if)
        ip("link", "set", host_if, "up")
        for a in addrs:
            ip("-n", ns, "addr", "add", f"{a}/29", "dev", peer)
        ip("-n", ns, "link", "set", peer, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", "203.0.113.1")
        for a in addrs:
            # http.server's own main looks its address up in DNS first,
            # which from this namespace waits for a resolver's timeout.
            serve = (
                "import http.server as h, socketserver as s, sys\n"
                "class S(h.HTTPServer):\n"
                "    def server_bind(self):\n"
                "        s.TCPServer.server_bind(self); self.server_name, self.server_port = self.server_address[:2]\n"
                "S((sys.argv[1], 8000), h.SimpleHTTPRequestHandler).serve_forever()\n"
            )
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", serve, a],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/var/empty" if os.path.isdir("/var/empty") else "/",
            ))
        for a in addrs:
            assert _until(lambda: subprocess.run(
                ["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", f"http://{a}:8000/"]).returncode == 0, timeout=10), a
        yield addrs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_e2b_network_rules(e2b_env, public_servers):
    """`network={"allow_out", "deny_out"}` at create and `update_network`
    (the whole set replaced; what it leaves out cleared): an allowed
    server is reachable and a denied one is not, allowed wins over denied,
    changes hold when the call returns, and the rules survive pause and
    resume; rules E2B refuses (a domain in deny_out, a domain allowed
    without everything denied) are refused with 400."""
    base, key = e2b_env
    a, b = public_servers

    def code(sbx, addr):
        return sbx.commands.run(f"curl -s -m 2 -o /dev/null -w '%{{http_code}}' http://{addr}:8000/ || true").stdout

    open_ = Sandbox.create("base", timeout=120)
    try:
        assert (code(open_, a), code(open_, b)) == ("200", "200"), "no rules: both reachable"
    finally:
        open_.kill()

    sbx = Sandbox.create("base", timeout=120, network={"allow_out": [a], "deny_out": ["0.0.0.0/0"]})
    try:
        assert (code(sbx, a), code(sbx, b)) == ("200", "000")
        r = httpx.get(f"{base}/sandboxes/{sbx.sandbox_id}", headers={"X-API-Key": key})
        assert r.json()["network"]["allowOut"] == [f"{a}/32"] and r.json()["network"]["denyOut"] == ["0.0.0.0/0"], r.text
        sbx.update_network({"allow_out": [b], "deny_out": ["0.0.0.0/0"]})
        assert (code(sbx, a), code(sbx, b)) == ("000", "200"), "the change holds at once"
        assert sbx.pause() is True
        sbx = Sandbox.connect(sbx.sandbox_id)
        assert (code(sbx, a), code(sbx, b)) == ("000", "200"), "rules survive pause and resume"
        sbx.update_network({"deny_out": [f"{a}/32"]})
        assert (code(sbx, a), code(sbx, b)) == ("000", "200")
        sbx.update_network({})
        assert (code(sbx, a), code(sbx, b)) == ("200", "200"), "an empty update clears the rules"
        for bad in [{"denyOut": ["example.com"]}, {"allowOut": ["example.com"]}, {"allowOut": ["1.2.3.4; drop"]}]:
            r = httpx.put(f"{base}/sandboxes/{sbx.sandbox_id}/network", headers={"X-API-Key": key}, json=bad)
            assert r.status_code == 400 and r.json()["code"] == 400, (bad, r.text)
        # The update's allow_internet_access=False denies all not allowed.
        r = httpx.put(f"{base}/sandboxes/{sbx.sandbox_id}/network", headers={"X-API-Key": key}, json={"allowOut": [b], "allow_internet_access": False})
        assert r.status_code == 204, r.text
        assert (code(sbx, a), code(sbx, b)) == ("000", "200")
    finally:
        sbx.kill()
    r = httpx.put(f"{base}/sandboxes/{sbx.sandbox_id}/network", headers={"X-API-Key": key}, json={})
    assert r.status_code == 404 and r.json()["code"] == 404, r.text

    # As E2B's: no internet access is everything denied but what is allowed.
    closed = Sandbox.create("base", timeout=120, allow_internet_access=False, network={"allow_out": [a]})
    try:
        assert (code(closed, a), code(closed, b)) == ("200", "000")
        info = httpx.get(f"{base}/sandboxes/{closed.sandbox_id}", headers={"X-API-Key": key}).json()
        assert info["allowInternetAccess"] is False and info["network"]["denyOut"] == ["0.0.0.0/0"], info
    finally:
        closed.kill()


def test_e2b_public_traffic_and_masked_host(e2b_env):
    """E2B's default: a sandbox's ports are public (envd's keeps its
    token) and the create answer has no traffic token; with
    `allow_public_traffic: False` a port needs `e2b-traffic-access-token`
    (403 when wrong) and the answer carries it; `mask_request_host`
    is the Host the app sees, `${PORT}` replaced."""
    base, _ = e2b_env
    port = httpx.URL(base).port

    def start_echo(sbx):
        sbx.files.write("/tmp/ws.py", WS_ECHO)
        sbx.commands.run("python3 /tmp/ws.py", background=True)

    def get(sbx, headers, path="/index.html"):
        return httpx.get(f"{base}{path}", headers={"Host": f"8765-{sbx.sandbox_id}.localhost:{port}", **headers}, timeout=10)

    pub = Sandbox.create("base", timeout=120, network={"mask_request_host": "${PORT}-app.example.com"})
    try:
        assert pub.traffic_access_token is None
        start_echo(pub)
        r = _until(lambda: _try(lambda: (lambda r: r if r.status_code == 200 else None)(get(pub, {}, "/headers"))), timeout=15)
        assert r is not None, "a public port without credentials"
        assert "host: 8765-app.example.com" in r.text.lower(), r.text
        r = httpx.get(f"{base}/health", headers={"E2b-Sandbox-Id": pub.sandbox_id, "E2b-Sandbox-Port": "49983"})
        assert r.status_code in (401, 403), "envd's port keeps its token"
    finally:
        pub.kill()

    private = Sandbox.create("base", timeout=120, network={"allow_public_traffic": False})
    try:
        token = private.traffic_access_token
        assert token
        start_echo(private)
        r = _until(lambda: _try(lambda: (lambda r: r if r.status_code == 200 else None)(get(private, {"e2b-traffic-access-token": token}, "/headers"))), timeout=15)
        assert r is not None
        assert "e2b-traffic-access-token" not in r.text.lower(), "the token does not reach the app"
        assert get(private, {}).status_code in (401, 403)
        assert get(private, {"e2b-traffic-access-token": "wrong"}).status_code == 403
    finally:
        private.kill()


def test_e2b_filesystem_pause_boots_again(e2b_env):
    """`pause(mode="filesystem")` keeps only the files: its processes end,
    `pauseMode` says `filesystem`, and connect cold-boots it (a new boot
    id, files kept, still `user`); `on_resume="reboot"` cold-boots a
    sandbox paused with its memory; `on_timeout` with mode `filesystem`
    pauses so at the timeout; E2B's 400s for lifecycles that cannot be."""
    base, key = e2b_env

    def detail(sbx):
        return httpx.get(f"{base}/sandboxes/{sbx.sandbox_id}", headers={"X-API-Key": key}).json()

    def boot_id(sbx):
        return sbx.commands.run("cat /proc/sys/kernel/random/boot_id").stdout

    def sleepers(sbx):
        return sbx.commands.run("pgrep -x sleep || echo none").stdout.strip()

    sbx = Sandbox.create("base", timeout=120)
    try:
        sbx.files.write("kept.txt", "kept")
        sbx.commands.run("sleep 1000", background=True)
        first = boot_id(sbx)
        assert sbx.pause(mode="filesystem") is True
        d = detail(sbx)
        assert (d["state"], d["pauseMode"]) == ("paused", "filesystem"), d
        back = Sandbox.connect(sbx.sandbox_id)
        second = boot_id(back)
        assert second != first
        assert back.files.read("kept.txt") == "kept"
        assert sleepers(back) == "none"
        assert back.commands.run("whoami").stdout == "user\n"

        back.commands.run("sleep 1000", background=True)
        assert back.pause() is True
        assert detail(back)["pauseMode"] == "full"
        again = Sandbox.connect(sbx.sandbox_id, on_resume="reboot")
        assert boot_id(again) != second and sleepers(again) == "none"
        assert "pauseMode" not in detail(again)
    finally:
        sbx.kill()

    timed = Sandbox.create("base", timeout=2, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}})
    try:
        assert _until(lambda: timed.get_info().state.value == "paused", timeout=15)
        assert detail(timed)["pauseMode"] == "filesystem"
        assert Sandbox.connect(timed.sandbox_id).files.read("/etc/hostname")
    finally:
        timed.kill()

    # Its time set to 0 pauses it as its timeout would: without memory.
    now = Sandbox.create("base", timeout=300, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}})
    try:
        now.set_timeout(0)
        d = detail(now)
        assert (d["state"], d["pauseMode"]) == ("paused", "filesystem"), d
    finally:
        now.kill()

    for bad in [{"autoPauseMemory": False}, {"autoPause": True, "autoPauseMemory": False, "autoResume": {"enabled": True}}]:
        r = httpx.post(f"{base}/sandboxes", headers={"X-API-Key": key}, json={"templateID": "base", **bad})
        assert r.status_code == 400 and r.json()["code"] == 400, (bad, r.text)
