"""Run the model server with uvicorn: one process, or several worker processes on one port.

Two choices here, both measured (docs/benchmarks.md):
- uvicorn binds the shared socket of `--workers N` with proto 0, and asyncio then never sets TCP_NODELAY on
  accepted connections, so every keep-alive response waits ~40 ms for a delayed ACK (Kludex/uvicorn#3149).
  We bind with IPPROTO_TCP ourselves.
- With one shared listening socket, whichever worker wakes first accepts, and keep-alive clients can all end
  up on one worker. Each worker binds its own socket with SO_REUSEPORT instead, so the kernel spreads
  connections across workers (Linux; elsewhere it still works, unbalanced).

Connection limits (issue 10): each worker serves at most `max_concurrent_connections` connections and requests;
above that uvicorn answers a clean 503. uvicorn has no deadline for the request head (it only times out idle
keep-alive connections after a response), so connections that never finish their head would hold a file
descriptor forever: `guarded_http_protocol` adds a head deadline and size limit, and closes the longest-idle
connections to make room for new requests when the limit is reached.
"""

from __future__ import annotations

import asyncio
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

APP_FACTORY = "modelops.serving.http.app:app_from_env"


def bind_socket(host: str, port: int, reuse_port: bool = False, backlog: int = 2048) -> socket.socket:
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
    sock.listen(backlog)  # uvloop keeps a passed socket's backlog: set it here
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


# An idle connection younger than this is not closed to make room: a client that has just connected, or just
# got its answer, may be sending its next request right now.
EVICT_IDLE_AFTER_S = 1.0
# Without a hard limit (RLIM_INFINITY), raise the soft one to this.
OPEN_FILES_TARGET = 1_048_576


def guarded_http_protocol(settings: ServerSettings) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with three guards, all per worker process:

    - the request head (request line and headers) must arrive within `header_timeout_s` of the connection
      opening or of its first byte (slowloris); otherwise the connection is closed;
    - a head over `max_header_bytes` is answered 431 and the connection closed;
    - when `max_concurrent_connections` is reached, connections idle for at least EVICT_IDLE_AFTER_S (silent
      since they opened, or kept alive between requests) are closed, oldest first, so idle connections never
      turn away a request; only busy connections make uvicorn answer 503.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    header_timeout_s = settings.header_timeout_s
    max_header_bytes = settings.max_header_bytes
    limit = settings.max_concurrent_connections
    # Connections with no request in progress, in the order they became so (oldest first) -> since when.
    waiting: dict[GuardedProtocol, float] = {}

    class HeadTooLarge(Exception):
        pass

    class GuardedProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.head_timer: asyncio.TimerHandle | None = None
            self.head_bytes = 0
            self.in_head = True  # the next bytes belong to a request head
            self.head_too_large = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.arm_head_timer()
            self.make_room()
            waiting[self] = self.loop.time()

        def connection_lost(self, exc: Exception | None) -> None:
            waiting.pop(self, None)
            self.cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.in_head:
                if self.head_timer is None:  # the first byte of a head after a keep-alive pause
                    self.arm_head_timer()
                    waiting.pop(self, None)
                    waiting[self] = self.loop.time()
                self.head_bytes += len(data)
            super().data_received(data)
            if self.in_head and self.head_bytes > max_header_bytes and not self.transport.is_closing():
                self.refuse_head()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.arm_head_timer()  # a pipelined head that started in the same read as the previous body

        def on_headers_complete(self) -> None:
            self.cancel_head_timer()
            self.in_head = False
            waiting.pop(self, None)
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > max_header_bytes:
                self.head_too_large = True
                raise HeadTooLarge  # httptools stops parsing; send_400_response answers 431 instead
            self.make_room()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.in_head, self.head_bytes = True, 0

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.timeout_keep_alive_task is not None:  # now idle until the next request
                waiting.pop(self, None)
                waiting[self] = self.loop.time()

        def send_400_response(self, msg: str) -> None:
            if self.head_too_large:
                self.refuse_head()
            else:
                super().send_400_response(msg)

        def arm_head_timer(self) -> None:
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(header_timeout_s, self.head_timed_out)

        def cancel_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def head_timed_out(self) -> None:
            self.head_timer = None
            if not self.transport.is_closing():
                log.debug("closing a connection that sent no complete request head in %g s", header_timeout_s)
                self.transport.close()

        def refuse_head(self) -> None:
            body = b"Request Header Fields Too Large"
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

        def make_room(self) -> None:
            """Close the longest-idle connections while this worker is at its connection limit."""
            if len(self.connections) < limit:
                return
            now = self.loop.time()
            while len(self.connections) >= limit and waiting:
                oldest, since = next(iter(waiting.items()))
                if now - since < EVICT_IDLE_AFTER_S:
                    return
                del waiting[oldest]
                oldest.cancel_head_timer()
                oldest.transport.close()
                # connection_lost runs later: count it as gone now, as uvicorn's limit check is next
                self.connections.discard(oldest)

    return GuardedProtocol


def raise_open_files_limit(max_connections: int) -> None:
    """Raise this process' soft RLIMIT_NOFILE to its hard limit (worker processes inherit it), so that the
    connection limit, not the descriptor table, decides when clients get a 503."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, OPEN_FILES_TARGET)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < max_connections + 256:
        log.warning(
            "the open files limit (%d) is below max_concurrent_connections (%d) plus room for the model and "
            "the registry: raise the hard limit (ulimit -Hn) or lower MODELOPS_MAX_CONCURRENT_CONNECTIONS",
            soft,
            max_connections,
        )


def _config(settings: ServerSettings) -> Any:
    import uvicorn

    try:
        http: Any = guarded_http_protocol(settings)
    except ImportError:  # httptools comes with uvicorn[standard]; h11 still bounds the head size
        log.warning("httptools is not installed: request heads have no deadline (header_timeout_s)")
        http = "h11"
    return uvicorn.Config(
        APP_FACTORY,
        factory=True,
        loop="auto",
        http=http,
        access_log=False,
        log_level=settings.log_level,
        limit_concurrency=settings.max_concurrent_connections,
        backlog=settings.listen_backlog_connections,
        # Longer than typical load balancer idle timeouts (60 s); idle connections still count towards
        # max_concurrent_connections and are closed first when it is reached.
        timeout_keep_alive=settings.keep_alive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=30,
        server_header=False,
    )


def _worker(host: str, port: int) -> None:
    """One worker process: its own SO_REUSEPORT socket, its own event loop and model."""
    import uvicorn

    settings = ServerSettings()
    sock = bind_socket(host, port, reuse_port=True, backlog=settings.listen_backlog_connections)
    uvicorn.Server(_config(settings)).run(sockets=[sock])


def run_server(settings: ServerSettings, host: str, port: int, workers: int) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish before the process exits."""
    import uvicorn

    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    raise_open_files_limit(settings.max_concurrent_connections)
    log.info("model server on http://%s:%d with %d worker(s)", host, port, workers)
    if workers == 1:
        sock = bind_socket(host, port, backlog=settings.listen_backlog_connections)
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
