"""The model server a pytest session owns: started once, watched, restarted, stopped.

The controller (or the only process, without xdist) creates one `EmbeddedModelServer` with
every model the run's pipeline names. Nothing starts until `url` is first read: xdist's
`pytest_configure_node` reads it to hand it to the workers, a process without xdist when its
first backend is made. The server (`python -m pytest_codegen.models.server`) is a separate
process, so no pytest process ever runs llama.cpp and forking (the sandbox) stays safe.

A watcher thread waits on the process: if it dies while the session runs it is started again
on the same port (at most `max_restarts` times in any `restart_window` seconds), so clients
retrying a request find it again; after that, or if it cannot start, `url` raises and requests
fail with a clear `ModelServerError` and the server's last log lines. The server exits with
its stdin: a session killed outright leaves no server behind.

The server's OpenMP threads wait passively (`OMP_WAIT_POLICY=PASSIVE`, unless the environment
sets it): it shares the machine with the workers and their sandboxed programs, and llama.cpp's
threads spinning at barriers while another process holds a core slowed decoding 5-10x here
(2 threads on 2 busy cores: 3 tok/s spinning, 21 passive, Gemma 270M), against a small cost on
an idle machine (7% in a measurement in llama.cpp's PR 13079).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from .openai_backend import ModelServerError
from .server import READY_PREFIX


class EmbeddedModelServer:
    """`models`: served name -> (path, mode)."""

    def __init__(
        self,
        models: Mapping[str, tuple[Path, str]],
        *,
        n_ctx: int = 4096,
        threads: int | None = None,
        slots: int = 4,
        decode: str = "batched",
        verbose: bool = False,
        max_restarts: int = 3,
        restart_window: float = 600.0,
        start_timeout: float = 120.0,
    ) -> None:
        self.models = dict(models)
        self.n_ctx, self.threads, self.slots, self.decode = n_ctx, threads, slots, decode
        self.verbose = verbose
        self.max_restarts, self.restart_window = max_restarts, restart_window
        self.start_timeout = start_timeout
        self.restarts = 0
        self._url: str | None = None
        self._port = 0
        self._error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._closing = False
        self._lock = threading.Lock()  # serializes the first start
        self._proc_lock = threading.Lock()  # guards _proc, _closing and the restart counts
        self._restart_times: deque[float] = deque()
        self._log_dir = tempfile.TemporaryDirectory(prefix="codegen-model-server-")
        self.log_path = Path(self._log_dir.name) / "server.log"

    @property
    def url(self) -> str:
        """The server's base URL (`http://127.0.0.1:PORT/v1`), starting it on first use;
        ModelServerError once it failed to start or died for good."""
        with self._lock:
            if self._error is not None:
                raise ModelServerError(self._error)
            if self._url is None:
                try:
                    self._url = self._start()
                except ModelServerError as error:
                    self._error = str(error)
                    raise
                threading.Thread(target=self._watch, name="model-server-watch",
                                 daemon=True).start()
            return self._url

    def diagnosis(self) -> str:
        """Why requests may fail: the saved error, or the end of the server's log."""
        if self._error is not None:
            return self._error
        tail = self.log_tail()
        return f"its log ends: {tail}" if tail else ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def started(self) -> bool:
        return self._url is not None

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "pytest_codegen.models.server", "--port", str(self._port),
                "--n-ctx", str(self.n_ctx), "--slots", str(self.slots), "--decode", self.decode,
                "--watch-stdin"]
        for name, (path, mode) in sorted(self.models.items()):
            args += ["--model", f"{name}={path}:{mode}"]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.verbose:
            args.append("--verbose")
        return args

    def _start(self) -> str:
        """Start the process and wait for its ready line (called with the lock held)."""
        log = self.log_path.open("ab")
        try:
            proc = subprocess.Popen(
                self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True)
        finally:
            log.close()
        with self._proc_lock:
            if self._closing:
                self._kill(proc)
                raise ModelServerError("the model server was closed while it started")
            self._proc = proc
        line = _read_line(proc, self.start_timeout)
        if not line.startswith(READY_PREFIX):
            self._kill(proc)
            status = f"exit status {proc.returncode}" if proc.returncode is not None else "no ready line"
            raise ModelServerError(
                f"the model server did not start ({status}): {line.strip() or self.log_tail()}")
        url = line[len(READY_PREFIX):].strip()
        self._port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        return url

    def _watch(self) -> None:
        """Restart the server when it dies, at most `max_restarts` times in any
        `restart_window` seconds; `_lock` is not held while it starts, so `close` never waits."""
        while True:
            proc = self._proc
            if proc is None:
                return
            proc.wait()
            with self._proc_lock:
                if self._closing or proc is not self._proc:
                    return
                now = time.monotonic()
                while self._restart_times and now - self._restart_times[0] > self.restart_window:
                    self._restart_times.popleft()
                if len(self._restart_times) >= self.max_restarts:
                    self._error = (f"the model server at {self._url} died (exit status "
                                   f"{proc.returncode}) and was restarted {self.restarts} times "
                                   f"already ({len(self._restart_times)} in the last "
                                   f"{self.restart_window:g} s): {self.log_tail()}")
                    return
                self._restart_times.append(now)
                self.restarts += 1
            try:
                self._start()
            except ModelServerError as error:
                if not self._closing:
                    self._error = f"the model server died and could not be restarted: {error}"
                return

    def log_tail(self, lines: int = 8) -> str:
        return read_log_tail(self.log_path, lines)

    def close(self) -> None:
        with self._proc_lock:  # never `_lock`: a restart in progress ends when its process does
            self._closing = True
            proc, self._proc = self._proc, None
        if proc is not None:
            self._kill(proc)
        self._log_dir.cleanup()

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line of `proc`, or "" if it exits or `timeout` passes first."""
    result: list[bytes] = []

    def read() -> None:
        try:
            result.append(proc.stdout.readline())  # type: ignore[union-attr]
        except (ValueError, OSError):  # the caller gave up on the process and closed the pipe
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while reader.is_alive() and time.monotonic() < deadline:
        reader.join(0.05)
        if proc.poll() is not None:
            reader.join(1)
            break
    return result[0].decode(errors="replace") if result else ""


def read_log_tail(path: Path, lines: int = 8) -> str:
    """The last `lines` lines of a server log, joined with " | " ("" if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])
