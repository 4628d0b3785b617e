"""``python -m devstack``: a complete local Trigger Hub stack in the foreground.

Starts real mongod (replica set), Tansu (Kafka protocol) and Ceph RGW (S3 with push
notifications) with their data under ``.hub/``, then the hub itself (``python -m hub serve``),
deploys the samples, writes ``.hub/dev.env`` and waits. ``--instances N`` runs N hubs behind
HAProxy instead (the proxy on the hub and function ports, the hubs on ports above them), the way several
instances are deployed (compose.yaml). Ctrl-C (or SIGTERM) stops the hub and
every server; if the hub or a server dies, everything is stopped and the exit code is non-zero.

A second run reuses ``.hub/`` (same tokens, same data) and is up in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO

from devstack.binaries import (
    ServerError,
    die_with_parent_prefix,
    ensure_port_free,
    stop_process,
    wait_until,
)
from devstack.haproxy import HAProxy
from devstack.mongo import MongoServer
from devstack.rgw import CephRGW
from devstack.tansu import TansuServer

log = logging.getLogger("devstack")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORTS = {"mongo": 27117, "kafka": 19092, "rgw": 17480, "mon": 17489, "hub": 8080, "fn": 8081}
# The hub's own default (hub/settings.py mongo_db), unless HUB_MONGO_DB names another: the only
# database the hub's MongoDB user may write (devstack/mongo.py).
DEFAULT_MONGO_DB = "trigger_hub"


class Stop(Exception):
    """Raised in the main thread by the SIGTERM/SIGHUP handler."""


def _repo_root() -> Path:
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").exists() else Path.cwd()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m devstack",
        description="Run mongod, a Kafka broker, Ceph RGW and the hub locally (Ctrl-C stops all).",
    )
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("HUB_DEV_DIR") or _repo_root() / ".hub"),
                   help="where server data, logs and tokens live (env HUB_DEV_DIR; default: .hub)")
    p.add_argument("--env-file", type=Path, default=None,
                   help="where to write the KEY=value env file (default: DATA_DIR/dev.env)")
    for name, env in (("mongo", "MONGO"), ("kafka", "KAFKA"), ("rgw", "RGW"), ("mon", "MON"), ("hub", "HUB"),
                      ("fn", "FN")):
        p.add_argument(f"--{name}-port", type=int, default=_env_int(f"HUB_DEV_{env}_PORT", DEFAULT_PORTS[name]),
                       help=f"(env HUB_DEV_{env}_PORT; default {DEFAULT_PORTS[name]})")
    p.add_argument("--instances", type=int, default=_env_int("HUB_DEV_INSTANCES", 1),
                   help="hub instances; more than 1 runs them behind HAProxy on the hub and function "
                        "ports, the instances on hub port + 10 + n (admin) and + 30 + n (function URLs) "
                        "(env HUB_DEV_INSTANCES; default 1)")
    p.add_argument("--no-hub", action="store_true", help="start the servers only; run the hub yourself")
    p.add_argument("--no-samples", action="store_true", help="do not run python -m samples.deploy")
    p.add_argument("--hub-timeout", type=float, default=60.0, help="seconds to wait for /healthz")
    args = p.parse_args(argv)
    if not 1 <= args.instances <= 16:
        p.error("--instances must be between 1 and 16")
    if args.instances > 1 and args.no_hub:
        p.error("--instances runs the hubs behind a proxy; with --no-hub run them yourself")
    args.data_dir = args.data_dir.resolve()
    args.env_file = (args.env_file or args.data_dir / "dev.env").resolve()
    return args


def load_tokens(path: Path) -> dict[str, str]:
    """Secrets made once per data dir and reused, so URLs and tokens stay valid across runs."""
    try:
        tokens = json.loads(path.read_text())
    except (OSError, ValueError):
        tokens = {}
    wanted: dict[str, Callable[[], str]] = {
        "api_token": lambda: secrets.token_urlsafe(32),
        "webhook_token": lambda: secrets.token_urlsafe(32),
        "s3_access_key": lambda: "hub-" + secrets.token_hex(8),
        "s3_secret_key": lambda: secrets.token_urlsafe(30),
    }
    changed = False
    for key, make in wanted.items():
        if not isinstance(tokens.get(key), str) or not tokens[key]:
            tokens[key] = make()
            changed = True
    if changed:
        _write_private(path, json.dumps(tokens, indent=2) + "\n")
    return {k: str(v) for k, v in tokens.items()}


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """One devstack per data dir: a second one would fight over the same dbpath and ports."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fh: IO[str] = (data_dir / "devstack.lock").open("a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise ServerError(
                f"another devstack (pid {fh.read().strip() or '?'}) is already running with {data_dir}; "
                "stop it first or pass --data-dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


class DevStack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = _repo_root()
        d: Path = args.data_dir
        self.tokens = load_tokens(d / "tokens.json")
        # mongod with --auth: a root user and a least-privilege hub user, passwords in d/mongo
        self.mongo_db = os.environ.get("HUB_MONGO_DB") or DEFAULT_MONGO_DB
        self.mongo = MongoServer(d / "mongo", args.mongo_port, hub_db=self.mongo_db)
        self.kafka = TansuServer(args.kafka_port, d / "kafka")
        self.rgw = CephRGW(d / "rgw", args.rgw_port, args.mon_port,
                           access_key=self.tokens["s3_access_key"], secret_key=self.tokens["s3_secret_key"])
        self.hubs: list[subprocess.Popen[bytes]] = []
        self.hub_url = f"http://127.0.0.1:{args.hub_port}"  # the proxy's, with several instances
        self.fn_url = f"http://127.0.0.1:{args.fn_port}"  # function URLs: an origin of their own
        self.proxy = (HAProxy(self.instance_ports(), args.hub_port, d / "haproxy",
                              fn_backend_ports=self.instance_fn_ports(), fn_port=args.fn_port)
                      if args.instances > 1 else None)

    def instance_ports(self) -> list[int]:
        if self.args.instances == 1:
            return [self.args.hub_port]
        return [self.args.hub_port + 10 + n for n in range(1, self.args.instances + 1)]

    def instance_fn_ports(self) -> list[int]:
        if self.args.instances == 1:
            return [self.args.fn_port]
        return [self.args.hub_port + 30 + n for n in range(1, self.args.instances + 1)]

    # -- environment -------------------------------------------------------------------
    def hub_env(self) -> dict[str, str]:
        return {
            "HUB_MONGO_URL": self.mongo.url,  # the hub user's, with its password
            "HUB_MONGO_DB": self.mongo_db,
            "HUB_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "HUB_S3_ENDPOINT": self.rgw.endpoint,
            "HUB_S3_ACCESS_KEY": self.rgw.access_key,
            "HUB_S3_SECRET_KEY": self.rgw.secret_key,
            "HUB_S3_REGION": self.rgw.region,
            "HUB_S3_FLAVOR": "rgw",
            "HUB_API_TOKEN": self.tokens["api_token"],
            "HUB_WEBHOOK_TOKEN": self.tokens["webhook_token"],
            "HUB_HTTP_PORT": str(self.args.hub_port),
            "HUB_FN_PORT": str(self.args.fn_port),
            "HUB_PUBLIC_FN_URL": self.fn_url,
            "HUB_DATA_DIR": str(self.args.data_dir / "data"),
            "HUB_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "HUB_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            # with several instances: the proxy, so the buckets notify it and never one instance
            **({"HUB_PUBLIC_URL": self.hub_url} if self.proxy else {}),
        }

    def instance_env(self, n: int, port: int) -> dict[str, str]:
        """Instance n's own settings: its ports and data dir (and so its instance id)."""
        env = self.hub_env()
        if self.proxy is not None:
            env.update(HUB_HTTP_PORT=str(port), HUB_FN_PORT=str(self.instance_fn_ports()[n - 1]),
                       HUB_DATA_DIR=str(self.args.data_dir / f"data-{n}"))
        return env

    def write_env_file(self) -> None:
        # MONGO_ADMIN_URL (root) is for you, not the hub: to write the documents your MongoDB
        # triggers watch, or to open mongosh. The hub user may only read other databases.
        env = {"HUB_URL": self.hub_url, "HUB_FN_URL": self.fn_url, **self.hub_env(),
               "MONGO_ADMIN_URL": self.mongo.admin_url}
        # shell-quoted where needed (a URL's "&" would background the rest of the line when the
        # file is sourced); the CLI's reader strips the quotes
        _write_private(self.args.env_file, "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        if not self.args.no_hub:
            ensure_port_free(self.args.hub_port, "hub")
            ensure_port_free(self.args.fn_port, "hub (function URLs)")
            for port in {*self.instance_ports(), *self.instance_fn_ports()}:
                ensure_port_free(port, "hub instance")
        log.info("starting mongod on port %s ...", self.args.mongo_port)
        self.mongo.start()
        log.info("starting tansu (Kafka protocol) on port %s ...", self.args.kafka_port)
        self.kafka.start()
        first = not (self.args.data_dir / "rgw" / "cluster.json").exists()
        log.info("starting Ceph RGW on port %s (%s) ...", self.args.rgw_port,
                 "first run: building the cluster, ~20 s" if first else "restart, ~6 s")
        self.rgw.start()
        log.info("servers up in %.1f s", time.monotonic() - t0)
        if not self.args.no_hub:
            self.start_hub()
            if not self.args.no_samples:
                self.deploy_samples()
        self.write_env_file()
        self.print_summary(time.monotonic() - t0)

    def start_hub(self) -> None:
        if self.proxy is not None:
            log.info("starting haproxy on port %s for %s hub instances ...", self.args.hub_port, self.args.instances)
            self.proxy.start()
        for n, port in enumerate(self.instance_ports(), 1):
            env = {**os.environ, **self.instance_env(n, port)}
            Path(env["HUB_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
            log.info("starting the hub: %s -m hub serve (port %s) ...", sys.executable, port)
            # Own session: Ctrl-C reaches only us, and we stop the hub before the servers it uses.
            self.hubs.append(subprocess.Popen(
                die_with_parent_prefix() + [sys.executable, "-m", "hub", "serve"],
                env=env, cwd=self.root, stdin=subprocess.DEVNULL, start_new_session=True,
            ))
        for hub, port in zip(self.hubs, self.instance_ports()):
            url = f"http://127.0.0.1:{port}"
            try:
                wait_until(lambda: _healthy(url), timeout=self.args.hub_timeout, what=f"hub {url}/healthz",
                           proc=hub, interval=0.2)
            except ServerError as exc:
                raise ServerError(f"{exc} (the hub's own output is above)") from None
        if self.proxy is not None:
            wait_until(lambda: _healthy(self.hub_url), timeout=30, what=f"haproxy {self.hub_url}/healthz",
                       proc=self.proxy.proc, log_path=self.proxy.log_path, interval=0.2)

    def deploy_samples(self) -> None:
        samples = self.root / "samples"
        if not ((samples / "deploy.py").exists() or (samples / "deploy" / "__init__.py").exists()):
            log.warning("samples/deploy.py does not exist yet; skipping the sample deployment")
            return
        log.info("deploying the samples: python -m samples.deploy ...")
        env = {**os.environ, **self.hub_env(), "HUB_URL": self.hub_url}
        done = subprocess.run([sys.executable, "-m", "samples.deploy"], env=env, cwd=self.root,
                              stdin=subprocess.DEVNULL, timeout=600, check=False)
        if done.returncode != 0:
            log.warning("python -m samples.deploy failed with exit code %s; the stack keeps running",
                        done.returncode)

    def print_summary(self, elapsed: float) -> None:
        env_file = _rel(self.args.env_file)
        rgw_pids = ", ".join(f"{k} {v}" for k, v in self.rgw.pids.items())
        lines = [
            f"Trigger Hub dev stack is up ({elapsed:.1f} s); data in {_rel(self.args.data_dir)}",
            f"  mongodb  {self.mongo.display_url}  (mongod pid {self.mongo.pid}; --auth)",
            f"  kafka    {self.kafka.bootstrap}  (tansu pid {self.kafka.pid})",
            f"  s3       {self.rgw.endpoint}  region {self.rgw.region}  (ceph rgw: {rgw_pids})",
        ]
        if self.proxy is not None:
            lines.append(f"  hub      {self.hub_url}  (haproxy pid {self.proxy.proc.pid if self.proxy.proc else '?'}); "
                         f"function URLs {self.fn_url}")
            for hub, port in zip(self.hubs, self.instance_ports()):
                lines.append(f"    instance http://127.0.0.1:{port}  (pid {hub.pid})")
        elif self.hubs:
            lines.append(f"  hub      {self.hub_url}  (pid {self.hubs[0].pid}); function URLs {self.fn_url}")
        else:
            lines.append(f"  hub      not started (--no-hub); run it with: "
                         f"set -a; . {env_file}; set +a; python -m hub serve")
        lines += [
            (f"  env      {env_file}  (URLs, tokens and MongoDB passwords: HUB_URL, HUB_API_TOKEN, "
             "HUB_MONGO_URL, MONGO_ADMIN_URL, ...)"),
            "Ctrl-C stops everything.",
        ]
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()

    def supervise(self) -> int:
        """Wait in the foreground; return non-zero as soon as the hub or a server dies."""
        while True:
            for hub in self.hubs:
                if hub.poll() is not None:
                    log.error("the hub (pid %s) exited with code %s; stopping everything", hub.pid, hub.returncode)
                    return 1
            dead = self.dead_server()
            if dead:
                log.error("%s; stopping everything", dead)
                return 1
            time.sleep(0.5)

    def dead_server(self) -> str | None:
        procs = {"mongod": self.mongo.proc, "tansu": self.kafka.proc,
                 **({"haproxy": self.proxy.proc} if self.proxy is not None and self.hubs else {}),
                 **{f"ceph {k}": v for k, v in self.rgw.procs.items()}}
        for name, proc in procs.items():
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else "?"
                return f"{name} exited with code {code} (logs under {_rel(self.args.data_dir)})"
        return None

    def stop(self) -> None:
        hubs, self.hubs = self.hubs, []
        for hub in hubs:  # SIGTERM to all first: they hand their work back in parallel
            log.info("stopping the hub (pid %s) ...", hub.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(hub.pid, signal.SIGTERM)
        for hub in hubs:
            stop_process(hub, timeout=20.0)
        if self.proxy is not None:
            self.proxy.stop()
        for name, server in (("ceph rgw", self.rgw), ("tansu", self.kafka), ("mongod", self.mongo)):
            try:
                server.stop()
            except Exception:  # keep going: the others must stop too
                log.exception("stopping %s failed", name)
        log.info("all stopped")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # a second signal (e.g. from both `timeout` and a shell) must not interrupt the stopping
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _still_stopping)
    raise Stop(signal.Signals(signum).name)


def _still_stopping(signum: int, frame: FrameType | None) -> None:
    log.warning("still stopping, please wait")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="devstack: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    # Explicit: a shell starts background jobs with SIGINT ignored, and Python keeps it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)
    stack: DevStack | None = None
    code = 0
    try:
        with data_dir_lock(args.data_dir):
            try:
                stack = DevStack(args)
                stack.start()
                code = stack.supervise()
            except KeyboardInterrupt:
                log.info("SIGINT received; stopping")
            except Stop as exc:
                log.info("%s received; stopping", exc)
            except ServerError as exc:
                log.error("%s", exc)
                code = 1
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, _still_stopping)
                if stack is not None:
                    stack.stop()
    except ServerError as exc:  # the lock
        log.error("%s", exc)
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
