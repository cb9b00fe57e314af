"""Supervised child processes: start in their own process group, log to a file, stop the whole group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelops.errors import ConfigError


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free_ports(host: str, ports: dict[str, int]) -> None:
    """ConfigError naming the first port that is taken (checked before anything starts)."""
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise ConfigError(f"{flag} and {seen[port]} are both {port}; choose different ports")
        seen[port] = flag
        if not port_free(host, port):
            raise ConfigError(f"port {port} on {host} is already in use; choose another with {flag}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pgid, os.WNOHANG)
        if not group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    time.sleep(0.1)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pgid, os.WNOHANG)


@dataclass
class Child:
    """One supervised component: started by us, or adopted from a stack that is already running."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    adopted_pgid: int | None = None
    restarts: list[float] = field(default_factory=list)
    given_up: bool = False

    def start(self) -> None:
        self.adopted_pgid = None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {' '.join(self.argv)}\n".encode())
            log.flush()
            # Own session: Ctrl-C in the terminal reaches only `modelops up`, which stops children in order,
            # and a detached stack outlives the command that started it.
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )

    def adopt(self, pgid: int) -> None:
        """Supervise a process group an earlier `modelops up` started."""
        self.proc, self.adopted_pgid = None, pgid

    @property
    def pid(self) -> int:
        if self.adopted_pgid is not None:
            return self.adopted_pgid
        assert self.proc is not None
        return self.proc.pid

    def exited(self) -> int | None:
        """The exit code once the component is gone (-1 for an adopted one, whose code we cannot know)."""
        if self.adopted_pgid is not None:
            return None if group_alive(self.adopted_pgid) else -1
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.adopted_pgid is not None:
            stop_group(self.adopted_pgid)
        elif self.proc is not None:
            stop_group(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
