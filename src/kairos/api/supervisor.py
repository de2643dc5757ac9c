"""`kairos serve --workers N`: uvicorn's supervisor, with one listening socket per process.

Uvicorn's own supervisor binds one socket and every process accepts from it; whichever
process wakes first takes the connection, so a burst of keep-alive connections can all
land on one process while the other core idles (measured: all 10 of wrk's connections on
one of two processes). Here each process gets its own socket on the same port
(SO_REUSEPORT) and the kernel spreads new connections across the sockets that are
listening. The supervisor keeps no copy: when a process dies its socket closes and new
connections go to the live ones; its replacement listens once its state is rebuilt.
"""

from __future__ import annotations

import logging
import socket

from uvicorn import Config
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger("uvicorn.error")


def reuse_port_socket(config: Config) -> socket.socket:
    """A TCP socket bound to the configured address, sharing the port with the others."""
    family = socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.host, config.port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class Supervisor(Multiprocess):
    """`Multiprocess` whose processes each own a socket (started, restarted and replaced
    as uvicorn's are)."""

    def __init__(self, config: Config) -> None:
        super().__init__(config, sockets=[])

    def _start(self) -> Process:
        sock = reuse_port_socket(self.config)
        try:
            process = Process(self.config, [sock])
            process.start()  # the child gets a duplicate of the socket at start
        finally:
            sock.close()
        return process

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            self.processes.append(self._start())

    def restart_all(self) -> None:
        for idx, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start()
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                return
            old.terminate()
            old.join()
            self.processes[idx] = new

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: kill it
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                log.error("Child process [%s] failed to start, stopping the parent process.", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            log.info("Child process [%s] died", process.pid)
            self.processes[idx] = self._start()


def serve(config: Config) -> None:
    """What `uvicorn.run` does for several workers, with a socket per process."""
    # A plain bind first: it fails if anything holds the port, a socket sharing it
    # included (another server started with SO_REUSEPORT would otherwise join ours).
    family = socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET
    with socket.socket(family=family, type=socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((config.host, config.port))
        config.port = probe.getsockname()[1]  # port 0: the one the kernel picked, for all
    try:
        Supervisor(config).run()
    except KeyboardInterrupt:
        pass
