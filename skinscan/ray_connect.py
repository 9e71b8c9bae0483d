"""Joining Ray from a SkinScan command: a wrong cluster address fails in one line within a bound, and Ray's
start-up notices (not errors) go to a log file, not the user's terminal."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Iterator

from skinscan.errors import ConfigError


@contextlib.contextmanager
def quiet_stderr(name: str = "skinscan_driver_stderr.log") -> Iterator[io.TextIOBase]:
    """Send what is written to file descriptor 2 (Ray's C++ and Python lines alike) to a log file for the block,
    kept in the Ray session's log folder; yields a stream to the real terminal (for progress bars). On an error
    other than Ctrl-C the captured lines are replayed, so nothing that explains a failure is hidden."""
    sys.stderr.flush()
    log = tempfile.NamedTemporaryFile(prefix="skinscan-", suffix=".log", delete=False)
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    os.dup2(log.fileno(), 2)
    failed = False
    try:
        yield terminal
    except KeyboardInterrupt:
        raise
    except BaseException:
        failed = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()
        log.close()
        if failed:
            with open(log.name, errors="replace") as f:
                sys.stderr.write(f.read())
        _keep_log(log.name, name)


def _keep_log(path: str, name: str) -> None:
    """Append the captured lines to `name` in this Ray session's log folder (where Ray keeps its own logs)."""
    try:
        import ray

        logs = ray._private.worker._global_node.get_logs_dir_path()
        with open(path, "rb") as src, open(os.path.join(logs, name), "ab") as dst:
            dst.write(src.read())
        os.unlink(path)
    except Exception:  # noqa: BLE001 - no session (init failed): keep the temporary file
        pass


def starts_local_ray(address: str | None) -> bool:
    """Whether joining Ray with `address` (or RAY_ADDRESS) starts a Ray on this machine rather than joining one."""
    target = address or os.environ.get("RAY_ADDRESS")
    return not target or target.startswith("local")


def connect(address: str | None, timeout_s: float, log_to_driver: bool = False) -> None:
    """Start or join Ray. A cluster address is probed first, so a wrong one fails in one line within `timeout_s`
    instead of Ray retrying for minutes; Ray's own start-up notices go to its log, not the user's terminal.
    `log_to_driver`: workers' output reaches this terminal (training's workers report there; screening's do not)."""
    import socket

    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    if target and target not in ("auto", "local"):
        host, _, port = target.split("://", 1)[-1].rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
        except (OSError, ValueError) as err:
            why = getattr(err, "strerror", None) or err
            raise ConfigError(
                f"cannot reach a Ray cluster at {target} within {timeout_s:g} s ({why}); is it running? "
                "(`ray status` on its head node)"
            ) from None
    with quiet_stderr():  # no address given: a Ray of our own ("local"), never the last `ray start` cluster here
        ray.init(address=target or "local", configure_logging=False, log_to_driver=log_to_driver)
    if starts_local_ray(address):
        start_reaper()
    _quiet_ray_data_console()


def _quiet_ray_data_console() -> None:
    """Ray Data's INFO/WARNING console lines (execution plans, progress-bar notices) stay in its log file."""
    import logging

    import ray.data  # noqa: F401 - importing it configures its loggers: after this, not before, they are quieted

    for handler in logging.getLogger("ray.data").handlers + logging.getLogger("ray").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


def start_reaper() -> None:
    """For a Ray this process started: a small watchdog in its own session that, once this process is gone (even
    SIGKILLed, when nothing in it can run), kills the Ray processes it had started within about a second. Without
    it Ray's dashboard and runtime-env agents and idle workers outlive a killed driver by 30-90 s."""
    import subprocess

    subprocess.Popen(
        [sys.executable, "-m", "skinscan.ray_connect", str(os.getpid())],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _reap(driver_pid: int, interval: float = 0.5) -> None:
    """Follow the descendants of `driver_pid`; when it exits, kill those still alive (same pid and start time)."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    seen: dict[int, float] = {}
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        try:
            for p in driver.children(recursive=True):
                if p.pid != os.getpid():
                    seen.setdefault(p.pid, p.create_time())
        except psutil.Error:
            pass
        time.sleep(interval)
    time.sleep(1.0)  # let Ray's own shutdown run first after a normal exit
    for pid, started in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started:
                for q in [*p.children(recursive=True), p]:
                    q.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    _reap(int(sys.argv[1]))
