"""A real mongod as a single-node replica set with authentication, because change streams need a
replica set and a sandboxed function with network access must not be able to open the control plane.

Authentication. mongod runs with ``--auth`` and ``--keyFile`` (a replica set with access control
needs a keyfile even with one member). The keyfile and the generated passwords live in the server's
data dir (``keyfile`` 0400, ``credentials.json`` 0600), so a restart on the same dbpath uses the
same users and needs no re-initiation. Two users, both in ``admin``:

- ``admin`` with the ``root`` role: created through the localhost exception right after
  ``replSetInitiate`` (on PRIMARY: a user cannot be written before), for operators and tests that
  act as "someone else's application" writing to arbitrary databases (``admin_url``).
- ``hub`` with the ``triggerHub`` role, the least the hub needs (``url``). What the hub does, read
  from hub/store.py, hub/intake/cursors.py, hub/catalog/triggers.py and connectors/mongodb.py:

  - its own database: documents, indexes, change streams (``readWrite`` on it) and changing a TTL
    index's expiry (``collMod`` on it);
  - MongoDB triggers: ``watch`` (``changeStream``), ``fullDocument: updateLookup`` (``find``) and
    ``list_collections`` (``listCollections``) on collections of any user database, because
    triggers are created at run time and name databases nobody knows when the server starts; the
    hub never writes there;
  - the oplog window for ``/v1/triggers`` cursors: ``find`` on ``local.oplog.rs``;
  - ``hello`` and ``ping`` need no privilege.

  So the hub user cannot write any database but its own, nor create users, read ``admin``/``config``
  or change the server: a leaked hub URL is not a root URL.

  ``hub_db=None`` (the default) is for the test suite and the benchmarks, which give every test or
  run a database of its own and drop it afterwards: there the hub user's writes cannot be limited to
  one database name, so ``readWrite`` on one database becomes ``readWriteAnyDatabase`` plus
  ``dbAdminAnyDatabase`` (drop a test database, ``collMod``); still no cluster, user or role
  administration. ``python -m devstack`` (``./scripts/run``) passes the hub's database and gets the
  narrow role. The role is re-applied on every start, so a changed ``hub_db`` takes effect.

The replica set is initiated on the first start only; a restart on the same dbpath comes back as
PRIMARY by itself. If the port changed since the last start, the stored member address is stale
and the node would sit in REMOVED state, so it is re-pointed with a forced reconfig.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from pymongo import MongoClient
from pymongo.errors import OperationFailure

from devstack.binaries import (
    Arg,
    Managed,
    ServerError,
    ensure_port_free,
    find_mongod,
    free_port,
    kill_stale,
    spawn,
    stop_process,
    wait_until,
)

log = logging.getLogger("devstack")

NOT_YET_INITIALIZED = 94
UNAUTHORIZED = 13
AUTHENTICATION_FAILED = 18
HUB_ROLE = "triggerHub"
ADMIN_USER = "admin"
HUB_USER = "hub"


@dataclass(frozen=True)
class MongoCredentials:
    """The generated users' names and passwords (URL-safe, 43 characters, from ``secrets``)."""

    admin_user: str
    admin_password: str
    hub_user: str
    hub_password: str

    @classmethod
    def generate(cls) -> MongoCredentials:
        return cls(ADMIN_USER, secrets.token_urlsafe(32), HUB_USER, secrets.token_urlsafe(32))


def _write_new_private(path: Path, data: bytes, mode: int) -> None:
    """Write a secret file that is never readable by others, not even for a moment: created with
    its final mode through a temp name, then renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)


def hub_role(hub_db: str | None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(privileges, inherited roles) of the hub user's role; the module docstring says why."""
    any_user_db = {"db": "", "collection": ""}  # every non-system collection of every database
    privileges: list[dict[str, Any]] = [
        {"resource": any_user_db, "actions": ["find", "changeStream", "listCollections"]},
        {"resource": {"db": "local", "collection": "oplog.rs"}, "actions": ["find"]},
    ]
    if hub_db is None:
        roles = [{"role": "readWriteAnyDatabase", "db": "admin"}, {"role": "dbAdminAnyDatabase", "db": "admin"}]
    else:
        privileges.append({"resource": {"db": hub_db, "collection": ""}, "actions": ["collMod"]})
        roles = [{"role": "readWrite", "db": hub_db}]
    return privileges, roles


class MongoServer(Managed):
    """mongod on 127.0.0.1:port with its dbpath, log, keyfile and credentials under data_dir.

    Use ``with MongoServer(dir) as mongo: mongo.url`` or ``start()`` / ``stop()``. ``url`` is the
    hub user's, ``admin_url`` the root user's; ``hub_db`` names the only database the hub user may
    write (None: any, for tests; see the module docstring).
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        port: int | None = None,
        *,
        replica_set: str = "rs0",
        hub_db: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="mongo-"))
        self.port = port or free_port()
        self.replica_set = replica_set
        self.hub_db = hub_db
        self.start_timeout = start_timeout
        self.dbpath = self.data_dir / "db"
        self.log_path = self.data_dir / "mongod.log"
        self.pidfile = self.data_dir / "mongod.pid"
        self.keyfile = self.data_dir / "keyfile"
        self.credentials_path = self.data_dir / "credentials.json"
        self.credentials = self._load_credentials()
        self.proc: subprocess.Popen[bytes] | None = None

    # -- credentials -----------------------------------------------------------------------
    def _load_credentials(self) -> MongoCredentials:
        """The data dir's users, generated (and saved 0600) on first use, so a restart on the same
        dbpath, which keeps its users, finds the passwords that match them."""
        try:
            stored = json.loads(self.credentials_path.read_text())
            return MongoCredentials(**{k: str(stored[k]) for k in MongoCredentials.__dataclass_fields__})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ServerError(f"{self.credentials_path} is unreadable ({exc}); remove {self.data_dir} "
                              "to start over with a new database") from None
        creds = MongoCredentials.generate()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _write_new_private(self.credentials_path, (json.dumps(creds.__dict__, indent=2) + "\n").encode(), 0o600)
        return creds

    def _ensure_keyfile(self) -> None:
        """The replica set's shared secret; mongod refuses a keyfile readable by group or others."""
        if self.keyfile.exists():
            if self.keyfile.stat().st_mode & 0o077:
                self.keyfile.chmod(0o400)
            return
        key = base64.b64encode(secrets.token_bytes(96))  # 128 base64 characters (6 to 1024 allowed)
        _write_new_private(self.keyfile, key + b"\n", 0o400)

    # -- addresses ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _url(self, user: str, password: str) -> str:
        return (f"mongodb://{quote_plus(user)}:{quote_plus(password)}@{self.host}/"
                f"?replicaSet={self.replica_set}&authSource=admin")

    @property
    def url(self) -> str:
        """The hub user's URL (what HUB_MONGO_URL holds): replica-set aware, so change streams work."""
        return self._url(self.credentials.hub_user, self.credentials.hub_password)

    @property
    def admin_url(self) -> str:
        """The root user's URL: for operators, and tests writing to databases the hub only watches."""
        return self._url(self.credentials.admin_user, self.credentials.admin_password)

    @property
    def display_url(self) -> str:
        """``url`` with the password masked, for logs and summaries."""
        return self._url(self.credentials.hub_user, "***").replace("%2A%2A%2A", "***")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> MongoServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.dbpath.mkdir(parents=True, exist_ok=True)
        self._ensure_keyfile()
        kill_stale(self.pidfile)
        ensure_port_free(self.port, "mongod")
        argv: list[Arg] = [
            find_mongod(),
            "--replSet", self.replica_set,
            "--bind_ip", "127.0.0.1",
            "--port", str(self.port),
            "--dbpath", str(self.dbpath),
            "--auth",
            "--keyFile", str(self.keyfile),
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

    def _client(self, *, admin: bool) -> MongoClient[dict[str, Any]]:
        creds = self.credentials
        auth: dict[str, Any] = (
            {"username": creds.admin_user, "password": creds.admin_password, "authSource": "admin"}
            if admin else {}
        )
        return MongoClient(self.host, directConnection=True, serverSelectionTimeoutMS=500,
                           connectTimeoutMS=500, **auth)

    def _wait(self, check: Any, what: str, deadline: float) -> Any:
        return wait_until(check, timeout=max(1.0, deadline - time.monotonic()),
                          what=f"mongod on {self.host} {what}", proc=self.proc, log_path=self.log_path)

    def _become_primary(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        anonymous = self._client(admin=False)
        admin = self._client(admin=True)
        try:
            self._wait(lambda: anonymous.admin.command("ping"), "accepting connections", deadline)
            # Users exist from an earlier start: everything goes through root. None yet (first start,
            # or one that stopped before creating them): the localhost exception lets an
            # unauthenticated local client initiate the set and create the first user.
            users = self._wait(lambda: self._users(admin, anonymous), "answering as admin", deadline)
            if users == "mismatch":
                raise ServerError(
                    f"{self.dbpath} has users, but the credentials in {self.credentials_path} do not "
                    f"match them; restore that file or remove {self.data_dir} to start over"
                )
            fresh = users == "none"
            client = anonymous if fresh else admin
            self._wait(lambda: self._ensure_replica_set(client), f"joining replica set {self.replica_set}", deadline)
            self._wait(lambda: client.admin.command("hello").get("isWritablePrimary"),
                       f"becoming PRIMARY of {self.replica_set}", deadline)
            if fresh:
                self._wait(lambda: self._create_admin(anonymous, admin), "creating the admin user", deadline)
            self._wait(lambda: self._ensure_hub_user(admin), "creating the hub user", deadline)
        finally:
            anonymous.close()
            admin.close()

    @staticmethod
    def _users(admin: MongoClient[dict[str, Any]], anonymous: MongoClient[dict[str, Any]]) -> str:
        """"users" (root logs in), "none" (no users yet: the localhost exception is open) or
        "mismatch" (users, but not ours). Other errors mean "not yet" (wait_until retries)."""
        try:
            admin.admin.command("ping")
            return "users"
        except OperationFailure as exc:
            if exc.code != AUTHENTICATION_FAILED:
                raise
        try:
            anonymous.admin.command("replSetGetStatus")
        except OperationFailure as exc:
            if exc.code == UNAUTHORIZED:
                return "mismatch"
            if exc.code != NOT_YET_INITIALIZED:
                raise
        return "none"

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

    def _create_admin(self, anonymous: MongoClient[dict[str, Any]], admin: MongoClient[dict[str, Any]]) -> bool:
        """The first user, through the localhost exception (which closes once it exists)."""
        creds = self.credentials
        try:
            anonymous.admin.command("createUser", creds.admin_user, pwd=creds.admin_password,
                                    roles=[{"role": "root", "db": "admin"}])
        except OperationFailure:
            # A retry after a lost reply: the user is there and the exception closed behind it.
            admin.admin.command("ping")
        log.debug("mongod on %s: admin user created", self.host)
        return True

    def _ensure_hub_user(self, admin: MongoClient[dict[str, Any]]) -> bool:
        """Create, or bring up to date, the hub's role and user (idempotent; runs on every start)."""
        creds = self.credentials
        db = admin.admin
        privileges, roles = hub_role(self.hub_db)
        if db.command("rolesInfo", HUB_ROLE)["roles"]:
            db.command("updateRole", HUB_ROLE, privileges=privileges, roles=roles)
        else:
            db.command("createRole", HUB_ROLE, privileges=privileges, roles=roles)
        hub_roles = [{"role": HUB_ROLE, "db": "admin"}]
        if db.command("usersInfo", creds.hub_user)["users"]:
            db.command("updateUser", creds.hub_user, pwd=creds.hub_password, roles=hub_roles)
        else:
            db.command("createUser", creds.hub_user, pwd=creds.hub_password, roles=hub_roles)
        return True

    def stop(self) -> None:
        """SIGTERM (mongod flushes and exits), SIGKILL after a grace period. Idempotent."""
        proc, self.proc = self.proc, None
        stop_process(proc, timeout=30.0, pidfile=self.pidfile)

    def __repr__(self) -> str:
        return f"MongoServer(url={self.display_url!r}, data_dir={str(self.data_dir)!r}, pid={self.pid})"


__all__ = ["MongoCredentials", "MongoServer", "ServerError", "hub_role"]
