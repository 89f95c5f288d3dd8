"""The embedded endpoint as a child process (`python -m engine serve-embedded`), for tests that kill it.

`kill()` is a crash (SIGKILL: no flush, no clean close); `restart()` brings it back on the same data dir and the
same port, so clients reconnect to the address they already hold.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Mapping, Optional

from engine.embedded.cli import API_KEY_ENV, READY_PREFIX
from engine.embedded.compat import DEFAULT_VERSION
from engine.embedded.server import format_address
from engine.embedded.storage_reads import StorageReads, read_stats_file
from engine.errors import PreconditionError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0  # cold start imports grpc, protobuf and qdrant-edge and replays WALs; seconds on this box
STOP_TIMEOUT_S = 30.0  # SIGTERM -> flushed shards; past this the child is killed
_REBIND_ATTEMPTS = 20  # restart on the same port: a just-killed listener can take a moment to let go


class EmbeddedProcess:
    """Run the endpoint in a child process. Use as a context manager; `.port`/`.address` once started."""

    def __init__(
        self,
        data_dir: Path | str,
        port: int = 0,
        api_key: Optional[str] = None,
        emulate_version: str = DEFAULT_VERSION,
        faults: Optional[str] = None,
        seed: int = 0,
        extra_env: Optional[Mapping[str, str]] = None,
        host: str = "127.0.0.1",
        log_path: Optional[Path | str] = None,
        tls_cert: Optional[Path | str] = None,
        tls_key: Optional[Path | str] = None,
        index_us_per_point: Optional[float] = None,
        stats_file: Optional[Path | str] = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self._requested_port = port
        self._api_key = api_key
        self._emulate_version = emulate_version
        self._faults = faults
        self._tls = (str(tls_cert), str(tls_key)) if tls_cert is not None else None
        self._seed = seed
        self._index_us_per_point = index_us_per_point
        self.stats_file = Path(stats_file) if stats_file is not None else None
        self._extra_env = dict(extra_env or {})
        # The child's stderr (its log), appended across restarts; by default inside the data dir, which the
        # endpoint's storage ignores (it reads only collections/, aliases.json and .lock there).
        self.log_path = Path(log_path) if log_path is not None else self.data_dir / "endpoint.log"
        self._proc: Optional[subprocess.Popen[str]] = None
        self._port: Optional[int] = None

    # -- properties -------------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedProcess is not started")
        return self._port

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("EmbeddedProcess is not started")
        return self._proc.pid

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def start(self) -> int:
        """Start the child and wait (bounded) until it prints its listening line. Returns the port."""
        if self.is_running():
            raise RuntimeError(f"endpoint already running (pid {self.pid})")
        port = self._port if self._port is not None else self._requested_port
        attempts = _REBIND_ATTEMPTS if port else 1
        attempt = 1
        while True:
            try:
                self._port = self._spawn(port)
                return self._port
            except _BindFailed:
                if attempt >= attempts:
                    raise PreconditionError(
                        f"embedded endpoint could not bind {format_address(self.host, port)} after {attempts} tries; "
                        f"see {self.log_path}"
                    ) from None
                attempt += 1
                time.sleep(0.25)

    def _command(self, port: int) -> list[str]:
        cmd = [
            sys.executable, "-m", "engine", "serve-embedded",
            "--data", str(self.data_dir),
            "--host", self.host,
            "--port", str(port),
            "--emulate-version", self._emulate_version,
            "--seed", str(self._seed),
        ]  # fmt: skip
        if self._faults:
            cmd += ["--faults", self._faults]
        if self._tls:
            cmd += ["--tls-cert", self._tls[0], "--tls-key", self._tls[1]]
        if self._index_us_per_point is not None:
            cmd += ["--index-us-per-point", str(self._index_us_per_point)]
        if self.stats_file is not None:
            cmd += ["--stats-file", str(self.stats_file)]
        return cmd

    def storage_reads(self) -> dict[str, StorageReads]:
        """Points read from storage per collection, as the child last wrote them (on stop, or every few seconds);
        needs `stats_file`."""
        if self.stats_file is None:
            raise RuntimeError("EmbeddedProcess was started without stats_file")
        if not self.stats_file.exists():
            return {}
        return read_stats_file(self.stats_file)

    def _spawn(self, port: int) -> int:
        env = dict(os.environ)
        env.update(self._extra_env)
        env.pop(API_KEY_ENV, None)
        if self._api_key:
            env[API_KEY_ENV] = self._api_key  # via the environment: never on a command line
        # engine must be importable in the child even when the caller runs from elsewhere
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_fh = open(self.log_path, "a", encoding="utf-8")
        log_start = log_fh.tell()  # this run's part of the log, for error messages
        try:
            proc = subprocess.Popen(
                self._command(port),
                stdout=subprocess.PIPE,
                stderr=log_fh,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
            )
        finally:
            log_fh.close()
        self._proc = proc
        assert proc.stdout is not None
        lines: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True,
                         name=f"embedded-{proc.pid}-stdout").start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise PreconditionError(
                    f"embedded endpoint did not report ready within {START_TIMEOUT_S:.0f}s; see {self.log_path}"
                )
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the child exited
                code = proc.wait()
                tail = self._log_tail(log_start)
                if "cannot listen on" in tail:
                    raise _BindFailed()
                raise PreconditionError(
                    f"embedded endpoint exited with code {code} before ready: {tail or self.log_path}")
            if line.startswith(READY_PREFIX):
                address = line[len(READY_PREFIX):].strip()
                bound = int(address.rsplit(":", 1)[1])
                log.info("embedded endpoint pid %d listening on %s", proc.pid, address)
                return bound

    def _log_tail(self, start: int, lines: int = 5) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                fh.seek(start)
                text = fh.read()
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> Optional[int]:
        """SIGTERM (clean stop: shards flushed) and wait; SIGKILL if it overstays. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded endpoint pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash. Writes acknowledged with wait=true must survive it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> int:
        """Stop it if running, then start again on the same data dir and port."""
        if self.is_running():
            self.stop()
        return self.start()

    def __enter__(self) -> "EmbeddedProcess":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _BindFailed(Exception):
    pass


def _pump(stream: IO[str], lines: "queue.Queue[Optional[str]]") -> None:
    # Drain the child's stdout for its whole life, so it never blocks on a full pipe.
    for line in stream:
        lines.put(line)
    lines.put(None)
