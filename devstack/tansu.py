"""Tansu, a Kafka-protocol broker, with in-memory storage.

No reachable registry carries Apache Kafka; Tansu speaks the protocol well enough for aiokafka
(consumer groups, commits, acks=all), except the idempotent/transactional producer. Storage is
memory only, so every start is an empty broker.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from devstack.binaries import (
    Managed,
    Arg,
    ServerError,
    ensure_port_free,
    find_tansu,
    free_port,
    kill_stale,
    spawn_listening,
    stop_process,
)

# Tansu reads these from the environment as defaults for its flags; keep an unrelated shell
# setting (e.g. an OTLP endpoint) from leaking into the broker.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
              "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TansuServer(Managed):
    """A broker on 127.0.0.1:port; its log goes to data_dir/tansu.log."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | str | None = None,
        *,
        start_timeout: float = 20.0,
    ) -> None:
        self.port = port or free_port()
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="tansu-"))
        self.start_timeout = start_timeout
        self.log_path = self.data_dir / "tansu.log"
        self.pidfile = self.data_dir / "tansu.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """bootstrap_servers for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> TansuServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        kill_stale(self.pidfile)
        ensure_port_free(self.port, "tansu")
        url = f"tcp://127.0.0.1:{self.port}"
        argv: list[Arg] = [
            find_tansu(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env.setdefault("RUST_LOG", "warn")
        self.proc = spawn_listening(argv, self.log_path, self.port, f"tansu on {self.bootstrap}",
                                    timeout=self.start_timeout, env=env, pidfile=self.pidfile)
        return self

    def stop(self) -> None:
        """Idempotent; the broker's data (memory) goes with it."""
        proc, self.proc = self.proc, None
        stop_process(proc, timeout=10.0, pidfile=self.pidfile)

    def __repr__(self) -> str:
        return f"TansuServer(bootstrap={self.bootstrap!r}, pid={self.pid})"


__all__ = ["ServerError", "TansuServer"]
