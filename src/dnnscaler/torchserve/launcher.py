"""Start and stop a local TorchServe on loopback, with its own ports, TMPDIR and logs.

One ``LocalTorchServe`` is one TorchServe: the ``torchserve`` launcher (Python) starts a
Java frontend, which starts one Python worker process per worker. Everything runs in a
process group of its own, with a work folder of its own: ``config.properties``, ``tmp/``
(TorchServe's PID file and unpacked archives: two instances with one TMPDIR refuse each
other) and ``logs/`` (``access_log.log`` is the agent's per-request latency source, see
``dnnscaler.torchserve.access_log``).

The launcher does not pass SIGTERM on (a SIGTERM to it leaves the Java frontend running),
so ``stop`` signals the Java process named in the PID file, waits for the frontend and its
workers, kills whatever is left of the group, and removes the work folder. An owner that
dies without ``stop`` (kill -9) takes the server with it (``owner_watch_prefix``). Token auth is
off only because every address is loopback; the model API is on (the agent registers
versions through it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import Knobs
from dnnscaler.torchserve.archives import LIMITS_SUFFIX, read_limits
from dnnscaler.torchserve.install import TorchServeInstall, find_torchserve
from dnnscaler.triton.launcher import free_port

log = get_logger(__name__)

# TorchServe exports a handler's metrics on /metrics only when its metrics config declares
# them: the demo handler's per-batch counters (``handler._record_batch``), appended to
# TorchServe's own default config.
BATCH_METRICS = """
  counter:
    - name: DnnscalerBatches
      unit: count
      dimensions: [ModelName, Level, BatchSize]
    - name: DnnscalerBatchComputeMs
      unit: ms
      dimensions: [ModelName, Level, BatchSize]
"""


def metrics_config_text() -> str:
    """TorchServe's default metrics config with ``BATCH_METRICS`` under ``model_metrics``."""
    import ts

    default = (Path(ts.__file__).parent / "configs" / "metrics.yaml").read_text()
    if "model_metrics:" not in default:
        raise RuntimeError("TorchServe's metrics.yaml has no model_metrics section")
    return default.rstrip("\n") + "\n" + BATCH_METRICS


class TorchServeStartError(RuntimeError):
    """The server exited, did not answer, or refused a model; the message quotes its log."""


class WorkdirTooLong(TorchServeStartError):
    """A work folder too deep for TorchServe's worker sockets; the message says why."""


# A Unix socket's path holds at most 107 bytes (Linux ``sun_path``, less its NUL), and
# TorchServe puts each worker's socket at ``<its TMPDIR>/.ts.sock.<port>``.
_SOCKET_PATH_MAX = 107
_SOCKET_NAME = "/tmp/.ts.sock.65535"  # our TMPDIR is <workdir>/tmp


def check_workdir(workdir: Path) -> None:
    """Raise ``WorkdirTooLong`` unless TorchServe's worker sockets fit under ``workdir``.

    Past the limit every worker dies at start with ``OSError: AF_UNIX path too long`` and
    the server answers 500 "Failed to start workers": a deep folder (pytest's ``tmp_path``
    is enough) does it, so the cause is named before anything starts.
    """
    path = f"{workdir.resolve()}{_SOCKET_NAME}"
    if len(path.encode()) > _SOCKET_PATH_MAX:
        raise WorkdirTooLong(
            f"{workdir} is too deep for TorchServe: its workers' Unix sockets would be"
            f" {len(path.encode())} bytes long ({_SOCKET_PATH_MAX} at most); use a shorter"
            " folder (or TMPDIR)"
        )


@dataclass(frozen=True)
class TorchServePorts:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int


def register_query(
    url: str,
    knobs: Knobs,
    *,
    model_name: str | None = None,
    response_timeout_s: int = 120,
    synchronous: bool = True,
) -> str:
    """The management API's query string that registers archive ``url`` with ``knobs``.

    ``synchronous=False`` answers at once and starts the workers in the background: a
    synchronous call holds one of the frontend's Netty threads until the workers are up,
    and requests on connections that thread serves wait as long (measured: one request
    per change waited the call's 1.0-1.9 s, outside the access log's timing).
    """
    params = {
        "url": url,
        "batch_size": str(knobs.max_batch_size),
        "max_batch_delay": str(delay_ms(knobs.queue_delay_us)),
        "initial_workers": str(knobs.instances),
        "synchronous": "true" if synchronous else "false",
        "response_timeout": str(response_timeout_s),
    }
    if model_name is not None:
        params["model_name"] = model_name
    return urllib.parse.urlencode(params)


# The ``sh -c`` program of ``owner_watch_prefix``: a watcher subshell in the background,
# then ``exec`` of the launcher in the same process.
OWNER_WATCH = (
    "owner=$1; shift; "
    '( trap "" TERM; while kill -0 "$owner" 2>/dev/null; do sleep 1; done; '
    "kill -TERM 0; sleep 10; kill -KILL 0 ) & "
    'exec "$@"'
)


def owner_watch_prefix(owner_pid: int) -> list[str]:
    """A command prefix that stops the whole server when process ``owner_pid`` dies.

    A test runner or bench killed without cleanup (kill -9, a CI timeout) must not leave a
    TorchServe behind: its Java frontend and workers hold ports, memory and a CPU share
    that the next run measures. Triton gets this from ``setpriv --pdeathsig``, but here
    the parent-death signal would reach only the ``torchserve`` launcher, which does not
    pass signals on (the frontend outlived it). So a shell starts a watcher in the
    server's new process group, then execs the launcher (same PID, same group): once the
    owner is gone (polled each second) the watcher sends SIGTERM to the group (the
    frontend and the workers shut down), and SIGKILL to what is left 10 s later. It
    ignores SIGTERM itself; ``stop`` kills it with the rest of the group.
    """
    return ["/bin/sh", "-c", OWNER_WATCH, "dnnscaler-torchserve-watch", str(owner_pid)]


def delay_ms(queue_delay_us: int) -> int:
    """TorchServe's ``max_batch_delay`` for a queue delay: one ms more, rounded up.

    Triton's delay 0 batches whatever is queued without waiting. TorchServe's 0 does not
    batch: its batcher takes one request and at most one more that is already there
    (measured 12-06, wide_mlp b16 at 400 rps: mean batch 1.37, saturated at 274 rps, p99
    1.3 s; with 1 ms: mean batch 4.2, all 404 rps served, p99 57 ms). Its 1 ms is our 0:
    a request alone waits up to 1 ms for company, a queue is taken as a batch at once.
    """
    return 1 + (max(0, queue_delay_us) + 999) // 1000


def queue_delay_us(max_batch_delay_ms: int) -> int:
    """The queue delay a ``max_batch_delay`` stands for (the inverse of ``delay_ms``)."""
    return max(0, int(max_batch_delay_ms) - 1) * 1000


def _http(method: str, url: str, timeout_s: float) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


class LocalTorchServe:
    """A local TorchServe; use ``with``/``async with`` or ``start()``/``stop()``.

    ``models`` maps each archive's model name to the knobs it is registered with at start
    (``None``: the initial knobs its limits file declares, else batch 1, 1 worker).
    Ports left ``None`` are picked free.
    """

    def __init__(
        self,
        model_store: str | Path,
        models: Mapping[str, Knobs | None] | Sequence[str] = (),
        *,
        ports: TorchServePorts | None = None,
        workdir: str | Path | None = None,
        job_queue_size: int = 1000,
        java_heap_mb: int = 512,
        ready_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
        install: TorchServeInstall | None = None,
    ) -> None:
        self.model_store = Path(model_store).resolve()
        if isinstance(models, Mapping):
            self.models: dict[str, Knobs | None] = dict(models)
        else:
            self.models = {name: None for name in models}
        self._want_ports = ports
        self.ports: TorchServePorts | None = None
        self._workdir_arg = Path(workdir).resolve() if workdir is not None else None
        self.workdir: Path | None = None
        self.job_queue_size = job_queue_size
        self.java_heap_mb = java_heap_mb
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._install = install
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: BinaryIO | None = None
        self._pgid: int | None = None
        self._java_pid: int | None = None

    # -- addresses ---------------------------------------------------------------------
    def _p(self) -> TorchServePorts:
        if self.ports is None:
            raise RuntimeError("TorchServe not started")
        return self.ports

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self._p().inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self._p().management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self._p().metrics}/metrics"

    def _dir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("TorchServe not started")
        return self.workdir

    @property
    def log_dir(self) -> Path:
        return self._dir() / "logs"

    @property
    def access_log(self) -> Path:
        return self.log_dir / "access_log.log"

    @property
    def console_log(self) -> Path:
        return self._dir() / "torchserve.out"

    @property
    def pid(self) -> int | None:
        """The Java frontend's PID (the server proper), once it wrote its PID file."""
        return self._java_pid

    def running(self) -> bool:
        return self._java_pid is not None and _alive(self._java_pid)

    def death_note(self, lines: int = 3) -> str | None:
        """One line on a server whose Java frontend is gone, with its logs' last lines;
        None while it runs or before it started (the frontend is the launcher's child,
        not ours: there is no exit code to quote)."""
        if self.pid is None or self.running():
            return None
        tail = " | ".join(x.strip() for x in self.log_tail(lines).splitlines() if x.strip())
        return (
            f"torchserve (Java pid {self.pid}) is no longer running (log tail: {tail or '(empty)'})"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the frontend's log and of the model log, for error messages."""
        parts = []
        for path in (self.console_log, self.log_dir / "model_log.log"):
            try:
                text = path.read_text(errors="replace")
            except (OSError, RuntimeError):
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            if tail:
                parts.append(f"--- {path.name} ---\n{tail}")
        return "\n".join(parts)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> LocalTorchServe:
        install = self._install or find_torchserve()
        self._spawn(install)
        try:
            self._wait_ready()
            for name, knobs in self.models.items():
                self.register(name, knobs)
        except BaseException:
            self.stop()
            raise
        return self

    async def start_async(self) -> LocalTorchServe:
        await asyncio.to_thread(self.start)
        return self

    def _config(self) -> str:
        p = self._p()
        lines = {
            "inference_address": f"http://127.0.0.1:{p.inference}",
            "management_address": f"http://127.0.0.1:{p.management}",
            "metrics_address": f"http://127.0.0.1:{p.metrics}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(p.grpc_inference),
            "grpc_management_port": str(p.grpc_management),
            "disable_token_authorization": "true",
            "enable_model_api": "true",
            "metrics_mode": "prometheus",
            "job_queue_size": str(self.job_queue_size),
            "default_workers_per_model": "1",
            "metrics_config": str(self._dir() / "metrics.yaml"),
            "vmargs": f"-Xmx{self.java_heap_mb}m -Djava.io.tmpdir={self._dir() / 'tmp'}",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _spawn(self, install: TorchServeInstall) -> None:
        self.ports = self._want_ports or TorchServePorts(*(free_port() for _ in range(5)))
        if self._workdir_arg is not None:
            check_workdir(self._workdir_arg)
            self.workdir = self._workdir_arg
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="dnnscaler-torchserve-"))
            check_workdir(self.workdir)
        for sub in ("tmp", "logs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "metrics.yaml").write_text(metrics_config_text())
        config = self.workdir / "config.properties"
        config.write_text(self._config())
        args = [
            *owner_watch_prefix(os.getpid()),
            str(install.launcher),
            "--start",
            "--foreground",
            "--ncs",
            "--ts-config", str(config),
            "--model-store", str(self.model_store),
            "--disable-token-auth",
            "--enable-model-api",
        ]  # fmt: skip
        fh = open(self.console_log, "ab")  # noqa: SIM115 - closed in stop()
        self._log_fh = fh
        self._proc = subprocess.Popen(
            args,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=install.environment(self.workdir / "tmp", self.log_dir),
            cwd=self.workdir,
            start_new_session=True,
        )
        self._pgid = self._proc.pid
        log.info(
            "torchserve.starting",
            pid=self._proc.pid,
            inference=self.inference_url,
            management=self.management_url,
            store=str(self.model_store),
            workdir=str(self.workdir),
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        pid_file = self._dir() / "tmp" / ".model_server.pid"
        while time.monotonic() < deadline:
            if self._java_pid is None and pid_file.is_file():
                with contextlib.suppress(OSError, ValueError):
                    self._java_pid = int(pid_file.read_text().strip())
            proc = self._proc
            if proc is not None and proc.poll() is not None and not self.running():
                raise TorchServeStartError(
                    f"torchserve exited with {proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                code, _ = _http("GET", f"{self.inference_url}/ping", 1.0)
                if code == 200 and self._java_pid is not None:
                    log.info("torchserve.ready", pid=self._java_pid, url=self.inference_url)
                    return
            time.sleep(0.2)
        raise TorchServeStartError(
            f"torchserve not ready after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def register(self, name: str, knobs: Knobs | None = None, url: str | None = None) -> None:
        """Register archive ``url`` (default ``NAME.mar``) with ``knobs`` and wait for its
        workers; the error quotes the server's answer and log."""
        if knobs is None:
            declared = read_limits(self.model_store / f"{name}{LIMITS_SUFFIX}")
            knobs = (
                Knobs(declared.initial_batch_size, declared.initial_instances)
                if declared is not None
                else Knobs()
            )
        query = register_query(url or f"{name}.mar", knobs, model_name=name)
        code, body = _http("POST", f"{self.management_url}/models?{query}", 300.0)
        if code != 200:
            raise TorchServeStartError(
                f"registering {name} answered {code}: {body.strip()}\n{self.log_tail()}"
            )
        log.info("torchserve.model_registered", model=name, knobs=knobs)

    def stop(self) -> None:
        """Stop the Java frontend (SIGTERM, then SIGKILL after ``stop_timeout_s``), kill
        what is left of the process group, remove the work folder if we made it and the
        server stopped cleanly (after a crash it stays, for its logs)."""
        proc = self._proc
        java = self._java_pid
        clean = True
        if java is not None and _alive(java):
            with contextlib.suppress(ProcessLookupError):
                os.kill(java, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout_s
            while _alive(java) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(java):
                clean = False
                log.warning("torchserve.kill_after_timeout", pid=java)
        elif proc is not None and java is None:
            clean = False
        if self._pgid is not None:
            _reap_group(self._pgid)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            log.info("torchserve.stopped", pid=java, launcher_returncode=proc.returncode)
        self._proc = None
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None
        if self._workdir_arg is None and self.workdir is not None and self.workdir.exists():
            if clean:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                log.warning("torchserve.workdir_kept", workdir=str(self.workdir))

    def group_alive(self) -> bool:
        """Whether any process of this server's group is still alive (after stop: none)."""
        if self._pgid is None:
            return False
        return bool(group_members(self._pgid))

    # -- context managers ----------------------------------------------------------
    def __enter__(self) -> LocalTorchServe:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalTorchServe:
        """Start in a thread; a cancellation meanwhile (Ctrl-C, SIGTERM) waits for the
        start to end and stops the server before it goes on. Without that the caller's
        cleanup removed the work folder under a starting server, which recreated parts of
        it (a bench stopped 0.5 s into a start left ``<workdir>/tmp/models``, 3 of 3
        tries). The start is a bare executor future, not a task: ``asyncio.run`` cancels
        every task when it unwinds, which would end the wait."""
        started = asyncio.get_running_loop().run_in_executor(None, self.start)
        try:
            await asyncio.shield(started)
        except asyncio.CancelledError:
            while not started.done():  # bounded by the start's ready and register timeouts
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([started])
            await asyncio.to_thread(self.stop)  # stop is idempotent
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _reap_group(pgid: int) -> None:
    for _ in range(100):
        if not group_members(pgid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.05)


def describe(server: LocalTorchServe) -> str:
    """One JSON line with the server's addresses (``dnnscaler torchserve-local`` prints it)."""
    return json.dumps(
        {
            "inference_url": server.inference_url,
            "management_url": server.management_url,
            "metrics_url": server.metrics_url,
            "models": list(server.models),
            "model_store": str(server.model_store),
            "workdir": str(server.workdir),
            "access_log": str(server.access_log),
            "pid": server.pid,
        }
    )
