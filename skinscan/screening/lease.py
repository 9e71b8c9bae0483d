"""One run at a time per output: a lease file (OUTPUT/_lease.json) that the running driver renews.

Two runs into one output would both take the same inputs as "to do" and, with different part sizes, write them
twice. A second run is refused in one line naming the holder. A lease whose holder died (SIGKILL, a lost node)
expires `ttl_s` after its last renewal, at once when the holder was a process on this host that no longer exists.
Local outputs create the lease atomically (O_EXCL); on object stores the lease is written, then read back, and the
run proceeds only if it reads its own id (the later of two simultaneous writers wins, the other is refused).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from skinscan.data import storage
from skinscan.errors import SkinScanError

LEASE = "_lease.json"
TTL_S = 60.0
RENEW_S = 10.0


def _path(output: str) -> str:
    return storage.join(storage.normalize(output), LEASE)


def _read(uri: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {}  # torn or unreadable: treated as expired below (no renewal time)


def _alive(holder: dict, ttl_s: float) -> bool:
    if time.time() - float(holder.get("renewed", 0)) > ttl_s:
        return False
    if holder.get("host") == socket.gethostname() and holder.get("pid"):
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


class OutputLease:
    """`with OutputLease(output):` holds the output for this run, renewing it every `renew_s` in a thread."""

    def __init__(self, output: str, ttl_s: float = TTL_S, renew_s: float = RENEW_S):
        self.uri = _path(output)
        self.output = output
        self.ttl_s, self.renew_s = ttl_s, renew_s
        self.me = {"run": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        now = time.time()
        started = self.me.setdefault("started", now)
        return json.dumps({**self.me, "started": started, "renewed": now, "ttl_s": self.ttl_s}).encode()

    def _refuse(self, holder: dict) -> None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
        raise SkinScanError(
            f"output {self.output} is being written by run {holder.get('run')} (host {holder.get('host')}, "
            f"pid {holder.get('pid')}, since {since}); wait for it to end, or, if it died, rerun after its lease "
            f"expires ({self.ttl_s:.0f} s after its last renewal)"
        )

    def acquire(self) -> None:
        holder = _read(self.uri)
        if holder is not None and _alive(holder, self.ttl_s):
            self._refuse(holder)
        if not storage.is_remote(self.uri):
            self._acquire_local(holder is not None)
        else:
            storage.write_bytes(self.uri, self._record())
            got = _read(self.uri) or {}
            if got.get("run") != self.me["run"]:
                self._refuse(got)
        self._thread = threading.Thread(target=self._renew, name="skinscan-lease", daemon=True)
        self._thread.start()

    def _acquire_local(self, stale: bool) -> None:
        from pathlib import Path

        path = Path(self.uri.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        if stale:  # an expired lease: replace it, unless another run replaced it first
            path.unlink(missing_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._refuse(_read(self.uri) or {})
        with os.fdopen(fd, "wb") as f:
            f.write(self._record())

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                storage.write_bytes(self.uri, self._record())
            except OSError:
                pass  # a missed renewal: the next one may succeed; the lease lasts ttl_s

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = _read(self.uri)
        if holder and holder.get("run") == self.me["run"]:
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.uri)
            fs.rm(path)

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
