"""Decode images/s per task against an object store with request latency, reading in turn vs concurrently.

A SeaweedFS S3 server on loopback (the `weed` binary of the dev extra), behind a proxy on loopback that waits
`latency_ms` before forwarding each request, as a remote bucket's round trip would; `n` small JPEGs in a flat
prefix; `decode_batch` (the screening decode stage, called in this process) over all of them with
`read_concurrency` 1 and 16. Each request the stage makes pays the latency (s3fs does a HEAD and a GET per object).
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latency_proxy(target_port: int, latency_ms: float) -> tuple[ThreadingHTTPServer, int]:
    """An HTTP proxy on loopback that sleeps `latency_ms` before forwarding each request to `target_port`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self):
            time.sleep(latency_ms / 1000)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers))
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            head = self.command == "HEAD"  # its Content-Length is the object's size: kept
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection") and (head or k.lower() != "content-length"):
                    self.send_header(k, v)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        def log_message(self, *args):
            pass

    port = _free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


def _weed_port() -> int:
    """A port p with p and p + 10000 free: SeaweedFS puts each service's gRPC on port + 10000 (an ephemeral port
    above 55535 has none, and the server then never starts)."""
    import random

    while True:
        base = random.randint(15000, 45000)
        try:
            for off in (0, 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue


def _seaweed(data: Path, bucket: str = "bench"):
    """A SeaweedFS S3 server on loopback, once it answers: (its process, its S3 port, an s3fs client of it with
    `bucket` made)."""
    import s3fs

    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    port, mport, vport, fport = (_weed_port() for _ in range(4))
    proc = subprocess.Popen(
        [weed, "server", "-s3", f"-s3.port={port}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={mport}", f"-volume.port={vport}", f"-filer.port={fport}", f"-dir={data}",
         "-master.volumeSizeLimitMB=64", "-s3.port.iceberg=0", "-s3.port.lance=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    fs = s3fs.S3FileSystem(key="k", secret="s", client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"})
    deadline = time.time() + 180  # a loaded machine starts SeaweedFS slowly
    while True:
        try:
            fs.mkdir(bucket)
            return proc, port, fs
        except Exception:  # noqa: BLE001 - the server is starting
            if time.time() > deadline:
                os.killpg(proc.pid, 9)
                raise
            time.sleep(0.5)


def run(workdir: str = "runs/bench", out: str | None = None, n: int = 256, latency_ms: float = 20.0) -> dict:
    import s3fs
    from PIL import Image

    from skinscan.bench.common import write_json
    from skinscan.data import storage
    from skinscan.data.synth import render
    from skinscan.screening.stages import decode_batch

    data = Path(tempfile.mkdtemp(prefix="bench-reads-"))
    weed, port, direct = _seaweed(data)
    proxy, pport = latency_proxy(port, latency_ms)
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update({**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{pport}"})
    try:
        uris = []
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(render(["MEL", "NV", "BCC", "BKL"][i % 4], 64, np.random.default_rng(i))[0]).save(
                buf, "JPEG"
            )
            direct.pipe(f"bench/flat/img_{i:05d}.jpg", buf.getvalue())
            uris.append(f"s3://bench/flat/img_{i:05d}.jpg")
        storage.archive_fs.cache_clear()
        s3fs.S3FileSystem.clear_instance_cache()
        batch = {"uri": np.array(uris, object), "image_id": np.array(uris, object)}
        res = {"inputs": n, "latency_ms_per_request": latency_ms}
        for k in (1, 16):
            decode_batch({k2: v[:8] for k2, v in batch.items()}, 64, 0, 10**8, read_concurrency=k)  # warm up
            t0 = time.perf_counter()
            got = decode_batch(batch, 64, 0, 10**8, read_concurrency=k)
            dt = time.perf_counter() - t0
            assert (got["status"] == "ok").all(), set(got["error_message"])
            res[f"read_concurrency_{k}_images_per_s"] = round(n / dt, 1)
            print(f"read_concurrency {k:>2}: {n / dt:8.1f} images/s per decode task ({latency_ms:g} ms a request)")
        res["speedup"] = round(res["read_concurrency_16_images_per_s"] / res["read_concurrency_1_images_per_s"], 2)
    finally:
        proxy.shutdown()
        os.killpg(weed.pid, 9)
        shutil.rmtree(data, ignore_errors=True)
    write_json(res, out)
    return res
