"""Many buffered execs printing as much as they may, at once: the control
plane keeps what its output budget allows (the rest is dropped and flagged
`stdout_truncated`, exit codes intact) and its memory stays bounded."""

import concurrent.futures
import time

import httpx

from conftest import running_wrenn_up


def _rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, MiB."""
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def test_concurrent_floods_of_output_keep_the_control_plane_bounded(tmp_path):
    with running_wrenn_up(tmp_path) as (url, key, proc):
        h = {"X-API-Key": key}
        with httpx.Client(base_url=url, headers=h, timeout=300) as c:
            ids = []
            for _ in range(3):
                r = c.post("/v1/sandboxes", json={"memory_mb": 256, "timeout_sec": 600})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            before, _ = _rss_mib(proc.pid)

            def flood(i: int, script: str = "head -c 64M /dev/zero | tr '\\0' a; exit 3") -> dict:
                sid = ids[i % len(ids)]
                r = c.post(
                    f"/v1/sandboxes/{sid}/exec",
                    json={
                        "cmd": "/bin/sh",
                        "args": ["-c", script],
                        "max_output_bytes": 64 << 20,
                        "timeout_sec": 240,
                    },
                )
                assert r.status_code == 200, r.text[:500]
                return r.json()

            started = time.time()
            with concurrent.futures.ThreadPoolExecutor(12) as pool:
                results = list(pool.map(flood, range(12)))
            took = time.time() - started
            _, peak = _rss_mib(proc.pid)
            kept = [len(x["stdout"]) for x in results]
            print(f"12 × 64 MiB at once: {took:.1f} s, kept {sum(kept) >> 20} MiB, control plane RSS {before:.0f} → peak {peak:.0f} MiB")
            assert all(x["exit_code"] == 3 for x in results), [x["exit_code"] for x in results]
            for x, n in zip(results, kept):
                assert x["stdout_truncated"] == (n < 64 << 20), (n, x["stdout_truncated"])
                assert x["stdout"] == "a" * n
            # One team may hold 512 MiB charged at once (output costs about
            # 10/3 of its size held): 12 × 64 MiB cannot all be kept.
            assert any(x["stdout_truncated"] for x in results)
            assert peak - before < 1200, f"control plane grew from {before:.0f} to {peak:.0f} MiB"
            # NULs: each is six bytes of JSON (\u0000), which the budget counts.
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                nuls = list(pool.map(lambda i: flood(i, "head -c 64M /dev/zero; exit 3"), range(8)))
            _, peak = _rss_mib(proc.pid)
            print(f"8 × 64 MiB of NULs at once: kept {sum(len(x['stdout']) for x in nuls) >> 20} MiB of JSON text, peak {peak:.0f} MiB")
            assert all(x["exit_code"] == 3 for x in nuls)
            assert peak - before < 1200, f"control plane grew from {before:.0f} to {peak:.0f} MiB"
            for sid in ids:
                c.delete(f"/v1/sandboxes/{sid}")
