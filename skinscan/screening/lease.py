"""One run at a time per output: a lease that the running driver holds for the whole run.

Two runs into one output would both take the same inputs as "to do" and, with different part sizes, write them
twice. A second run is refused in one line naming the holder (OUTPUT/_lease.json records it).

- Local outputs: an exclusive `flock` on OUTPUT/.lease.lock, held open for the run. The kernel drops it when the
  holder dies (SIGKILL included), so there is nothing to expire and no window in which two runs both hold it. On a
  shared mount (`output_shared`) it excludes runs across machines only where the filesystem forwards flock (NFSv4
  usually does; gcsfuse, s3fs-fuse and NFS mounted with local_lock do not): there, run one driver at a time.
- Object stores have no locks: the lease is OUTPUT/_lease.json, renewed every `renew_s`, expired `ttl_s` after its
  last renewal (at once when its holder was a process on this host that is gone). It is written, then read back,
  and the run proceeds only if it reads its own id; a renewal that finds another run's id marks the lease `lost`
  and stops. This is best effort: two runs starting within one write-read round trip of each other can both
  proceed (a conditional PUT, which fsspec does not expose, would close that gap).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from skinscan.data import storage
from skinscan.errors import ConfigError, SkinScanError

LEASE = "_lease.json"
LOCK = ".lease.lock"
TTL_S = 60.0
RENEW_S = 10.0


def _read(uri: str) -> dict | None:
    """The recorded holder; None when there is none. A record that is not JSON counts as expired ({})."""
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


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
    """`with OutputLease(output):` holds the output for this run (see the module docstring)."""

    def __init__(self, output: str, ttl_s: float = TTL_S, renew_s: float = RENEW_S):
        self.output = output
        self.uri = storage.join(storage.normalize(output), LEASE)
        self.remote = storage.is_remote(self.uri)
        self.ttl_s, self.renew_s = ttl_s, renew_s
        self.me = {
            "run": uuid.uuid4().hex[:12],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
        }
        self.lost = False
        self._fd: int | None = None
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps({**self.me, "renewed": time.time(), "ttl_s": self.ttl_s}).encode()

    def _refuse(self, holder: dict | None) -> None:
        holder = holder or {}
        since = holder.get("started")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since))) if since else "unknown"
        end = (
            "wait for it to end (a dead run's lock goes with its process)"
            if not self.remote
            else f"wait for it to end, or, if it died, rerun after its lease expires ({self.ttl_s:.0f} s)"
        )
        raise SkinScanError(
            f"output {self.output} is being written by run {holder.get('run', '?')} (host {holder.get('host', '?')}, "
            f"pid {holder.get('pid', '?')}, since {when}); {end}"
        )

    def acquire(self) -> None:
        if self.remote:
            self._acquire_remote()
        else:
            self._acquire_local()

    def _acquire_local(self) -> None:
        import fcntl
        from pathlib import Path

        folder = Path(self.uri.removeprefix("file://")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(f"output {self.output}: cannot write there ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = _read(self.uri)
            except OSError:
                holder = None
            self._refuse(holder)
        except OSError as err:  # a filesystem without locks (some NFS and FUSE mounts)
            os.close(fd)
            raise ConfigError(
                f"output {self.output}: cannot lock it ({err.strerror or err}); use another output"
            ) from None
        self._fd = fd
        try:
            storage.write_bytes(self.uri, self._record())  # who holds it, for the refusal's message
        except BaseException:
            self.release()
            raise

    def _acquire_remote(self) -> None:
        try:
            self._claim_remote()
        except OSError as err:  # the first touch of the bucket: credentials, a missing bucket, a refusal
            raise ConfigError(f"output {self.output}: cannot write there ({err})") from None

    def _claim_remote(self) -> None:
        holder = _read(self.uri)
        if holder is not None and _alive(holder, self.ttl_s):
            self._refuse(holder)
        storage.write_bytes(self.uri, self._record())
        got = _read(self.uri) or {}
        if got.get("run") != self.me["run"]:
            self._refuse(got)
        self._thread = threading.Thread(target=self._renew, name="skinscan-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            with self._mutex:
                if self._stop.is_set():
                    return
                try:
                    holder = _read(self.uri)
                    if holder is not None and holder.get("run") not in (None, self.me["run"]):
                        self.lost = True  # another run took over (this one stalled past the ttl): stop renewing
                        return
                    storage.write_bytes(self.uri, self._record())
                except OSError:
                    pass  # a missed renewal: the next one may succeed; the lease lasts ttl_s

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_s + 5)
        with self._mutex:  # a renewal still writing finishes first, and none starts after: no lease left behind
            try:
                holder = _read(self.uri)
                if holder and holder.get("run") == self.me["run"]:
                    import fsspec

                    fs, path = fsspec.core.url_to_fs(self.uri)
                    fs.rm(path)
            except OSError as err:  # best effort: never hides the run's own result or error
                import sys

                print(f"[screen] warning: could not remove the lease {self.uri} ({err})", file=sys.stderr)
            finally:
                if self._fd is not None:
                    os.close(self._fd)  # closing drops the flock
                    self._fd = None

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
