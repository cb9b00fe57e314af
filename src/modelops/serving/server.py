"""Run the model server with uvicorn: one process, or several worker processes on one port.

Two choices here, both measured (docs/benchmarks.md):
- uvicorn binds the shared socket of `--workers N` with proto 0, and asyncio then never sets TCP_NODELAY on
  accepted connections, so every keep-alive response waits ~40 ms for a delayed ACK (Kludex/uvicorn#3149).
  We bind with IPPROTO_TCP ourselves.
- With one shared listening socket, whichever worker wakes first accepts, and keep-alive clients can all end
  up on one worker. Each worker binds its own socket with SO_REUSEPORT instead, so the kernel spreads
  connections across workers (Linux; elsewhere it still works, unbalanced).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
from typing import Any

from modelops.errors import ConfigError
from modelops.settings import ServerSettings, prometheus_multiproc_dir

log = logging.getLogger(__name__)

APP_FACTORY = "modelops.serving.api:app_from_env"


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket whose accepted connections get TCP_NODELAY from asyncio."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _prepare_multiprocess_metrics() -> None:
    # prometheus_client reads this when it is first imported, so set it before any worker starts.
    directory = prometheus_multiproc_dir()
    if not directory:
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="modelops-metrics-")
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):  # stale files from an earlier run would add up
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))


def _config(settings: ServerSettings) -> Any:
    import uvicorn

    return uvicorn.Config(
        APP_FACTORY,
        factory=True,
        loop="auto",
        http="auto",
        access_log=False,
        log_level=settings.log_level,
        timeout_keep_alive=75,  # longer than typical load balancer idle timeouts (60 s)
        timeout_graceful_shutdown=30,
        server_header=False,
    )


def _worker(host: str, port: int) -> None:
    """One worker process: its own SO_REUSEPORT socket, its own event loop and model."""
    import uvicorn

    settings = ServerSettings()
    sock = bind_socket(host, port, reuse_port=True)
    uvicorn.Server(_config(settings)).run(sockets=[sock])


def run_server(settings: ServerSettings, host: str, port: int, workers: int) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish before the process exits."""
    import uvicorn

    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    log.info("model server on http://%s:%d with %d worker(s)", host, port, workers)
    if workers == 1:
        sock = bind_socket(host, port)
        if prometheus_multiproc_dir():
            _prepare_multiprocess_metrics()
        uvicorn.Server(_config(settings)).run(sockets=[sock])
        return
    bind_socket(host, port, reuse_port=True).close()  # a clear error now if the port is taken
    _prepare_multiprocess_metrics()
    _supervise(host, port, workers)


def _supervise(host: str, port: int, workers: int) -> None:
    """Start the workers, restart one that dies, stop them all on SIGINT/SIGTERM."""
    from prometheus_client import multiprocess

    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(host, port), daemon=False)
        process.start()
        return process

    def stop(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    processes = [start() for _ in range(workers)]
    while not stopping.wait(0.5):
        for i, process in enumerate(processes):
            if not process.is_alive():
                log.warning("worker %s exited with %s; starting a new one", process.pid, process.exitcode)
                multiprocess.mark_process_dead(process.pid)
                processes[i] = start()
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)  # uvicorn drains in-flight requests
    for process in processes:
        process.join(timeout=40)
        if process.is_alive():
            process.kill()
