"""HAProxy in front of several hub instances: the one shared address (HUB_PUBLIC_URL) that S3
notifications, function URLs and API clients use, so no instance's own address is ever handed out.

The same settings as ``deploy/haproxy.cfg`` (the compose file's proxy), with the instances listed
by port instead of found through DNS: health-checked on ``/healthz``, so a stopped or killed
instance is out of rotation within a few checks, and a request that could not reach an instance
(refused connection) is sent to another one.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from devstack.binaries import (
    Arg,
    Managed,
    ServerError,
    ensure_port_free,
    free_port,
    kill_stale,
    spawn_listening,
    stop_process,
)

CONFIG = """\
global
    log stdout format raw local0 warning
    maxconn 4096

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 120s
    # a slow client (slowloris) must send its whole request head within this
    timeout http-request 10s
    # above the longest function timeout (900 s): a slow synchronous invoke is answered, not cut
    timeout server 960s
    # a request whose connection was refused (an instance going away) goes to another one; only
    # then: a request that reached an instance may have run (an invoke, a function URL), so a
    # lost answer is the caller's to retry, never the proxy's
    retries 3
    option redispatch 1
    retry-on conn-failure

frontend hub
    bind 127.0.0.1:{port}
    default_backend hubs

backend hubs
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter {check_ms} fall 2 rise 1
{servers}
{functions}"""

# Function URLs on an origin of their own (the instances' HUB_FN_PORT); health from the admin port.
FUNCTIONS = """
frontend functions
    bind 127.0.0.1:{fn_port}
    default_backend hubs_fn

backend hubs_fn
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter {check_ms} fall 2 rise 1
{servers}
"""


def find_haproxy() -> Path:
    found = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(found).exists():
        raise ServerError("haproxy not found: ./scripts/setup installs Debian's haproxy package")
    return Path(found)


class HAProxy(Managed):
    """HAProxy on 127.0.0.1:port, balancing over hub instances at 127.0.0.1:backend_ports."""

    def __init__(self, backend_ports: Sequence[int], port: int | None = None, data_dir: Path | str | None = None,
                 *, check_interval_ms: int = 500, start_timeout: float = 15.0,
                 fn_backend_ports: Sequence[int] = (), fn_port: int | None = None) -> None:
        self.backend_ports = list(backend_ports)
        self.port = port or free_port()
        # the instances' function-URL listeners, in the order of backend_ports (none: no frontend)
        self.fn_backend_ports = list(fn_backend_ports)
        self.fn_port = (fn_port or free_port()) if self.fn_backend_ports else None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="haproxy-"))
        self.check_interval_ms = check_interval_ms
        self.start_timeout = start_timeout
        self.config_path = self.data_dir / "haproxy.cfg"
        self.log_path = self.data_dir / "haproxy.log"
        self.pidfile = self.data_dir / "haproxy.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def fn_url(self) -> str | None:
        return f"http://127.0.0.1:{self.fn_port}" if self.fn_port else None

    def config(self) -> str:
        servers = "\n".join(f"    server hub{i} 127.0.0.1:{p}" for i, p in enumerate(self.backend_ports, 1))
        functions = ""
        if self.fn_backend_ports:
            fn_servers = "\n".join(f"    server hub{i} 127.0.0.1:{fp} check port {p}"
                                   for i, (fp, p) in enumerate(zip(self.fn_backend_ports, self.backend_ports), 1))
            functions = FUNCTIONS.format(fn_port=self.fn_port, check_ms=self.check_interval_ms, servers=fn_servers)
        return CONFIG.format(port=self.port, check_ms=self.check_interval_ms, servers=servers, functions=functions)

    def start(self) -> HAProxy:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        kill_stale(self.pidfile)
        ensure_port_free(self.port, "haproxy")
        if self.fn_port:
            ensure_port_free(self.fn_port, "haproxy (function URLs)")
        self.config_path.write_text(self.config())
        argv: list[Arg] = [find_haproxy(), "-db", "-f", self.config_path]  # -db: foreground
        self.proc = spawn_listening(argv, self.log_path, self.port, f"haproxy on {self.url}",
                                    timeout=self.start_timeout, pidfile=self.pidfile)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, timeout=5.0, pidfile=self.pidfile)

    def __repr__(self) -> str:
        return f"HAProxy(url={self.url!r}, backends={self.backend_ports})"


__all__ = ["HAProxy", "find_haproxy"]
