"""Run the model server with uvicorn: one process or several workers sharing one listening socket.

uvicorn binds the shared socket of `--workers N` with proto 0, and asyncio then never sets
TCP_NODELAY on accepted connections, so every keep-alive response waits ~40 ms for a delayed ACK
(Kludex/uvicorn#3149). We bind the socket ourselves with IPPROTO_TCP and hand it to uvicorn.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile

from modelops.errors import ConfigError
from modelops.settings import ServerSettings, prometheus_multiproc_dir

log = logging.getLogger(__name__)

APP_FACTORY = "modelops.serving.api:app_from_env"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose accepted connections get TCP_NODELAY from asyncio."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def run_server(settings: ServerSettings, host: str, port: int, workers: int) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish before the process exits."""
    import uvicorn

    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    sock = bind_socket(host, port)
    if workers > 1 or prometheus_multiproc_dir():
        _prepare_multiprocess_metrics()
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        workers=workers,
        loop="auto",
        http="auto",
        access_log=False,
        log_level=settings.log_level,
        timeout_keep_alive=75,  # longer than typical load balancer idle timeouts (60 s)
        timeout_graceful_shutdown=30,
        server_header=False,
    )
    log.info("model server on http://%s:%d with %d worker(s)", host, port, workers)
    if workers == 1:
        uvicorn.Server(config).run(sockets=[sock])
        return
    from uvicorn.supervisors.multiprocess import Multiprocess

    Multiprocess(config, sockets=[sock]).run()
