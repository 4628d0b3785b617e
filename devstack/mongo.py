"""A real mongod as a single-node replica set, because change streams need one.

The replica set is initiated on the first start only; a restart on the same dbpath comes back as
PRIMARY by itself. If the port changed since the last start, the stored member address is stale
and the node would sit in REMOVED state, so it is re-pointed with a forced reconfig.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import OperationFailure

from devstack.binaries import (
    Managed,
    Arg,
    ServerError,
    ensure_port_free,
    find_mongod,
    free_port,
    kill_stale,
    spawn,
    stop_process,
    wait_until,
)

NOT_YET_INITIALIZED = 94


class MongoServer(Managed):
    """mongod on 127.0.0.1:port with its dbpath and log under data_dir.

    Use ``with MongoServer(dir) as mongo: mongo.url`` or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        port: int | None = None,
        *,
        replica_set: str = "rs0",
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="mongo-"))
        self.port = port or free_port()
        self.replica_set = replica_set
        self.start_timeout = start_timeout
        self.dbpath = self.data_dir / "db"
        self.log_path = self.data_dir / "mongod.log"
        self.pidfile = self.data_dir / "mongod.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL clients (and the hub) use: replica-set aware, so change streams work."""
        return f"mongodb://{self.host}/?replicaSet={self.replica_set}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> MongoServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.dbpath.mkdir(parents=True, exist_ok=True)
        kill_stale(self.pidfile)
        ensure_port_free(self.port, "mongod")
        argv: list[Arg] = [
            find_mongod(),
            "--replSet", self.replica_set,
            "--bind_ip", "127.0.0.1",
            "--port", str(self.port),
            "--dbpath", str(self.dbpath),
            "--oplogSize", "64",
            "--wiredTigerCacheSizeGB", "0.25",
            "--nounixsocket",  # /tmp/mongodb-PORT.sock would outlive a killed server
            "--setParameter", "diagnosticDataCollectionEnabled=false",
            # Small, non-preallocated journal: 17 MB instead of 300 MB per data dir.
            "--wiredTigerEngineConfigString", "log=(file_max=16MB,prealloc=false)",
        ]
        self.proc = spawn(argv, self.log_path, pidfile=self.pidfile)
        try:
            self._become_primary()
        except BaseException:
            self.stop()
            raise
        return self

    def _become_primary(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        client: MongoClient[dict[str, Any]] = MongoClient(
            self.host, directConnection=True, serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        try:
            wait_until(
                lambda: client.admin.command("ping"),
                timeout=self.start_timeout,
                what=f"mongod on {self.host} accepting connections",
                proc=self.proc,
                log_path=self.log_path,
            )
            wait_until(
                lambda: self._ensure_replica_set(client),
                timeout=max(1.0, deadline - time.monotonic()),
                what=f"mongod on {self.host} joining replica set {self.replica_set}",
                proc=self.proc,
                log_path=self.log_path,
            )
            wait_until(
                lambda: client.admin.command("hello").get("isWritablePrimary"),
                timeout=max(1.0, deadline - time.monotonic()),
                what=f"mongod on {self.host} becoming PRIMARY of {self.replica_set}",
                proc=self.proc,
                log_path=self.log_path,
            )
        finally:
            client.close()

    def _ensure_replica_set(self, client: MongoClient[dict[str, Any]]) -> bool:
        """One attempt; an exception means "try again" (wait_until polls it)."""
        try:
            client.admin.command("replSetGetStatus")
        except OperationFailure as exc:
            if exc.code == NOT_YET_INITIALIZED:
                # First start on this dbpath. (If the stored config is still loading, this fails
                # with AlreadyInitialized and the next round sees it.)
                client.admin.command(
                    "replSetInitiate",
                    {"_id": self.replica_set, "members": [{"_id": 0, "host": self.host}]},
                )
                return True
        # Initiated earlier. A REMOVED node (member address from an earlier port) needs re-pointing.
        config = client.admin.command("replSetGetConfig")["config"]
        hosts = [m["host"] for m in config["members"]]
        if hosts != [self.host]:
            config["members"] = [{**config["members"][0], "host": self.host}]
            config["version"] = int(config["version"]) + 1
            client.admin.command("replSetReconfig", config, force=True)
        return True

    def stop(self) -> None:
        """SIGTERM (mongod flushes and exits), SIGKILL after a grace period. Idempotent."""
        proc, self.proc = self.proc, None
        stop_process(proc, timeout=30.0, pidfile=self.pidfile)

    def __repr__(self) -> str:
        return f"MongoServer(url={self.url!r}, data_dir={str(self.data_dir)!r}, pid={self.pid})"


__all__ = ["MongoServer", "ServerError"]
