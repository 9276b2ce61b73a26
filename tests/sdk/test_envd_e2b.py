"""The official `e2b` SDK, unchanged, against Wrenn's envd (E2B_DEBUG mode)."""

import asyncio
import os
import threading
import time

import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    FileType,
    NotFoundException,
    TimeoutException,
)
from e2b.sandbox.commands.command_handle import PtySize
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType


def test_run_streams_stdout_and_stderr(sbx):
    seen = []
    r = sbx.commands.run("echo out; echo err >&2", on_stdout=seen.append)
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0)
    assert "".join(seen) == "out\n"


@pytest.mark.parametrize(
    "kwargs, cmd, want",
    [
        ({"envs": {"WRENN_X": "42"}}, "echo $WRENN_X", "42\n"),
        ({"cwd": "/tmp"}, "pwd", "/tmp\n"),
        ({"user": "root"}, "id -un", "root\n"),
        ({"user": "nobody"}, "id -un", "nobody\n"),
        ({}, "echo $HOME", os.path.expanduser("~root") + "\n"),
    ],
)
def test_run_honours_envs_cwd_and_user(sbx, kwargs, cmd, want):
    assert sbx.commands.run(cmd, **kwargs).stdout == want


def test_nonzero_exit_raises_command_exit(sbx):
    with pytest.raises(CommandExitException) as err:
        sbx.commands.run("echo bad >&2; exit 3")
    assert err.value.exit_code == 3
    assert err.value.stderr == "bad\n"


def test_timeout_raises_and_kills_the_command(sbx, workdir):
    marker = os.path.join(workdir, "survived")
    start = time.time()
    with pytest.raises(TimeoutException):
        sbx.commands.run(f"sleep 2; touch {marker}", timeout=0.5)
    assert time.time() - start < 2
    time.sleep(2.5)
    assert not os.path.exists(marker), "the command kept running after its timeout"
    assert sbx.commands.list() == []


def test_background_command_connect_and_kill(sbx):
    h = sbx.commands.run("for i in $(seq 1 100); do echo tick $i; sleep 0.1; done", background=True)
    assert h.pid > 0
    listed = {p.pid: p for p in sbx.commands.list()}
    assert h.pid in listed and listed[h.pid].cmd == "/bin/bash"
    again = sbx.commands.connect(h.pid)
    got = []
    t = threading.Thread(target=lambda: _wait_quietly(again, got))
    t.start()
    time.sleep(0.5)
    assert sbx.commands.kill(h.pid) is True
    t.join(5)
    assert not t.is_alive()
    assert any("tick" in line for line in got), got
    assert sbx.commands.kill(h.pid) is False
    assert all(p.pid != h.pid for p in sbx.commands.list())


def _wait_quietly(handle, out):
    try:
        handle.wait(on_stdout=out.append)
    except CommandExitException as e:
        out.append(f"exit {e.exit_code}")


def test_stdin_send_and_close(sbx):
    h = sbx.commands.run("cat; echo done", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "line one\n")
    sbx.commands.send_stdin(h.pid, b"line two\n")
    sbx.commands.close_stdin(h.pid)
    r = h.wait()
    assert r.stdout == "line one\nline two\ndone\n"


def test_pty_create_input_resize_and_kill(sbx):
    out = []
    ready = threading.Event()

    def collect(data):
        out.append(data)
        if b"pty-2-ready" in b"".join(out):
            ready.set()

    p = sbx.pty.create(PtySize(rows=24, cols=80))
    result = {}
    t = threading.Thread(target=lambda: result.update(r=_pty_wait(p, collect)))
    t.start()
    sbx.pty.send_stdin(p.pid, b"stty size; echo pty-$((1+1))-ready\n")
    assert ready.wait(10), b"".join(out)
    sbx.pty.resize(p.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(p.pid, b"stty size; exit 5\n")
    t.join(10)
    text = b"".join(out).decode(errors="replace")
    assert "24 80" in text and "30 100" in text, text
    assert result["r"] == 5

    killed = sbx.pty.create(PtySize(rows=10, cols=40))
    assert sbx.pty.kill(killed.pid) is True
    with pytest.raises(CommandExitException):
        killed.wait()


def _pty_wait(handle, on_pty):
    try:
        return handle.wait(on_pty=on_pty).exit_code
    except CommandExitException as e:
        return e.exit_code


def test_files_text_bytes_and_many(sbx, workdir):
    info = sbx.files.write(f"{workdir}/deep/new/a.txt", "héllo")
    assert info.path == f"{workdir}/deep/new/a.txt" and info.name == "a.txt"
    assert sbx.files.read(f"{workdir}/deep/new/a.txt") == "héllo"
    blob = bytes(range(256)) * 1000
    sbx.files.write(f"{workdir}/b.bin", blob)
    assert bytes(sbx.files.read(f"{workdir}/b.bin", format="bytes")) == blob
    written = sbx.files.write_files(
        [
            {"path": f"{workdir}/m/one.txt", "data": "1"},
            {"path": f"{workdir}/m/two.bin", "data": b"\x00\x02"},
        ]
    )
    assert sorted(w.name for w in written) == ["one.txt", "two.bin"]
    assert sbx.files.read(f"{workdir}/m/one.txt") == "1"
    assert bytes(sbx.files.read(f"{workdir}/m/two.bin", format="bytes")) == b"\x00\x02"


def test_files_gzip_and_octet_stream(sbx, workdir):
    data = b"compress me " * 10000
    sbx.files.write(f"{workdir}/g.bin", data, gzip=True)
    assert bytes(sbx.files.read(f"{workdir}/g.bin", format="bytes", gzip=True)) == data


def test_list_with_depth(sbx, workdir):
    for p in ["a.txt", "d1/b.txt", "d1/d2/c.txt"]:
        sbx.files.write(f"{workdir}/tree/{p}", p)
    names = lambda depth: sorted(e.path[len(workdir) + 6 :] for e in sbx.files.list(f"{workdir}/tree", depth=depth))
    assert names(1) == ["a.txt", "d1"]
    assert names(2) == ["a.txt", "d1", "d1/b.txt", "d1/d2"]
    assert names(3) == ["a.txt", "d1", "d1/b.txt", "d1/d2", "d1/d2/c.txt"]
    types = {e.name: e.type for e in sbx.files.list(f"{workdir}/tree")}
    assert types == {"a.txt": FileType.FILE, "d1": FileType.DIR}


def test_exists_make_dir_rename_remove_get_info(sbx, workdir):
    d = f"{workdir}/made/x/y"
    assert sbx.files.exists(d) is False
    assert sbx.files.make_dir(d) is True
    assert sbx.files.make_dir(d) is False
    assert sbx.files.exists(d) is True
    sbx.files.write(f"{d}/f.txt", "12345")
    info = sbx.files.get_info(f"{d}/f.txt")
    assert (info.name, info.type, info.size, info.owner) == ("f.txt", FileType.FILE, 5, "root")
    assert info.permissions.startswith("-rw") and info.modified_time.year >= 2024
    moved = sbx.files.rename(f"{d}/f.txt", f"{workdir}/moved/g.txt")
    assert moved.path == f"{workdir}/moved/g.txt"
    assert sbx.files.exists(f"{d}/f.txt") is False
    assert sbx.files.read(f"{workdir}/moved/g.txt") == "12345"
    sbx.files.remove(f"{workdir}/made")
    assert sbx.files.exists(f"{workdir}/made") is False
    # As E2B's: removing what is not there is no error.
    sbx.files.remove(f"{workdir}/made")
    with pytest.raises(NotFoundException):
        sbx.files.get_info(f"{workdir}/made")
    with pytest.raises(NotFoundException):
        sbx.files.read(f"{workdir}/nope.txt")


def test_watch_dir_polling(sbx, workdir):
    w = sbx.files.watch_dir(workdir, recursive=True)
    try:
        sbx.files.make_dir(f"{workdir}/sub")
        events = _collect(w.get_new_events, lambda ev: ("sub", FilesystemEventType.CREATE) in ev)
        sbx.files.write(f"{workdir}/sub/w.txt", "x")
        sbx.files.remove(f"{workdir}/sub/w.txt")
        events += _collect(w.get_new_events, lambda ev: ("sub/w.txt", FilesystemEventType.REMOVE) in ev)
        # A tree made in one go is reported whole, although its inner
        # directories exist before they can be watched.
        os.makedirs(f"{workdir}/a/b/c")
        events += _collect(w.get_new_events, lambda ev: ("a/b/c", FilesystemEventType.CREATE) in ev)
    finally:
        w.stop()
    assert ("a/b", FilesystemEventType.CREATE) in events
    assert ("sub", FilesystemEventType.CREATE) in events
    assert ("sub/w.txt", FilesystemEventType.CREATE) in events
    assert ("sub/w.txt", FilesystemEventType.WRITE) in events


def _collect(poll, done, timeout=5):
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen += [(e.name, e.type) for e in poll()]
        if done(seen):
            break
        time.sleep(0.05)
    return seen


def test_watch_dir_streaming_async(envd, monkeypatch, workdir):
    monkeypatch.setenv("E2B_DEBUG", "true")

    async def main():
        sbx = await AsyncSandbox.create()
        seen = []
        got = asyncio.Event()

        def on_event(e):
            seen.append((e.name, e.type))
            if e.name == "s.txt" and e.type == FilesystemEventType.WRITE:
                got.set()

        handle = await sbx.files.watch_dir(workdir, on_event=on_event)
        await sbx.files.write(f"{workdir}/s.txt", "hello")
        await asyncio.wait_for(got.wait(), 5)
        await handle.stop()
        return seen

    seen = asyncio.run(main())
    assert ("s.txt", FilesystemEventType.CREATE) in seen


def test_large_output_arrives_whole(sbx):
    total = []
    r = sbx.commands.run("head -c 20000000 /dev/zero | tr '\\0' x", on_stdout=lambda s: total.append(len(s)))
    assert r.exit_code == 0 and sum(total) == 20_000_000
