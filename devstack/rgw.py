"""A real S3 server with push notifications: a one-node Ceph cluster running the RADOS Gateway.

No reachable registry publishes a MinIO server any more; Ceph RGW comes from Debian and, unlike
the S3 emulators, really stores objects and really POSTs bucket notifications to an HTTP endpoint.

One monitor, one bluestore OSD on a sparse 10 GiB file, and radosgw (beast frontend) on
127.0.0.1, with authentication between the daemons turned off. Everything (conf, keyring, mon
store, OSD block file, admin sockets, pid files, logs) lives under ``data_dir``; nothing is
written to /etc/ceph, /var/lib/ceph or /var/log/ceph. The first start builds the cluster (~15 s);
later starts on the same data_dir only start the daemons (~5 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from devstack.binaries import (
    Managed,
    Arg,
    ServerError,
    ensure_port_free,
    find_ceph_tool,
    free_port,
    kill_stale,
    port_open,
    run_tool,
    spawn,
    stop_process,
    tail,
    wait_until,
)

MON_ID = "a"
OSD_ID = "0"
RGW_NAME = "client.rgw.a"
STATE_FILE = "cluster.json"


class CephRGW(Managed):
    """Ceph mon + OSD + radosgw with one S3 user (access_key / secret_key)."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        rgw_port: int | None = None,
        mon_port: int | None = None,
        *,
        access_key: str = "hub-dev",
        secret_key: str | None = None,
        uid: str = "hub",
        region: str = "us-east-1",
        start_timeout: float = 180.0,
    ) -> None:
        self.data_dir = (Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="rgw-"))).resolve()
        self.rgw_port = rgw_port or free_port()
        self.mon_port = mon_port or free_port()
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.uid = uid
        self.region = region
        self.start_timeout = start_timeout
        self.conf = self.data_dir / "ceph.conf"
        self.keyring = self.data_dir / "keyring"
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "log"
        self.state_path = self.data_dir / STATE_FILE
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.fresh = False  # True when the last start() built a new cluster
        self.timings: dict[str, float] = {}

    # -- public surface ---------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.rgw_port}"

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def start(self) -> CephRGW:
        if self.procs and all(p.poll() is None for p in self.procs.values()):
            return self
        self.stop()
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop radosgw, then the OSD, then the monitor; each whole process group. Idempotent."""
        for name in ("rgw", "osd", "mon"):
            proc = self.procs.pop(name, None)
            stop_process(proc, timeout=20.0, pidfile=self._pidfile(name))

    def __repr__(self) -> str:
        return f"CephRGW(endpoint={self.endpoint!r}, data_dir={str(self.data_dir)!r}, pids={self.pids})"

    def s3_client(self, retries: int = 3) -> Any:
        """A boto3 S3 client for this server (path-style, this region, these keys)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": retries},
                          connect_timeout=5, read_timeout=30),
        )

    # -- start-up ---------------------------------------------------------------------------
    def _start(self) -> None:
        for name in ("rgw", "osd", "mon"):
            kill_stale(self._pidfile(name))
        ensure_port_free(self.mon_port, "ceph-mon")
        ensure_port_free(self.rgw_port, "radosgw")
        state = self._read_state()
        self.fresh = state is None
        if state is None:
            # No finished cluster here (never built, or a build was interrupted): start clean.
            self._wipe()
            state = {"fsid": str(uuid.uuid4()), "osd_uuid": str(uuid.uuid4()), "mon_port": self.mon_port}
        for d in (self.run_dir, self.log_dir, self._mon_data().parent, self._osd_data(), self._rgw_data()):
            d.mkdir(parents=True, exist_ok=True)
        self._write_conf(state["fsid"])
        t0 = time.monotonic()
        if self.fresh:
            self._mkfs_mon(state["fsid"])
        elif state["mon_port"] != self.mon_port:
            self._move_mon(state["fsid"])
        self._spawn("mon", [find_ceph_tool("ceph-mon"), "-f", "-c", self.conf, "-i", MON_ID])
        wait_until(lambda: port_open(self.mon_port), timeout=30, what=f"ceph-mon on port {self.mon_port}",
                   proc=self.procs["mon"], log_path=self._log("mon." + MON_ID))
        if self.fresh:
            self._mkfs_osd(state["osd_uuid"])
        self.timings["mon"] = time.monotonic() - t0
        self._spawn("osd", [find_ceph_tool("ceph-osd"), "-f", "-c", self.conf, "-i", OSD_ID])
        self._spawn("rgw", [find_ceph_tool("radosgw"), "-f", "-c", self.conf, "-n", RGW_NAME])
        # radosgw creates its pools and zone on the first start, which needs the OSD up; the
        # HTTP port opens only after that.
        wait_until(self._http_answers, timeout=self.start_timeout, what=f"radosgw HTTP on {self.endpoint}",
                   log_path=self._log(RGW_NAME), guard=self._guard, interval=0.2)
        self.timings["http"] = time.monotonic() - t0
        self._ensure_user()
        state["mon_port"] = self.mon_port
        state["rgw_port"] = self.rgw_port
        self._write_state(state)  # from here on the data dir holds a usable cluster
        wait_until(self._put_works, timeout=self.start_timeout, what=f"a first S3 PUT to {self.endpoint}",
                   log_path=self._log(RGW_NAME), guard=self._guard, interval=0.5)
        self.timings["put"] = time.monotonic() - t0

    def _guard(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = self._log({"mon": "mon." + MON_ID, "osd": "osd." + OSD_ID, "rgw": RGW_NAME}[name])
                raise ServerError(
                    f"ceph {name} (pid {proc.pid}) exited with code {proc.returncode} during start-up\n"
                    f"--- last lines of {log} ---\n{tail(log)}\n"
                    f"--- stdout/stderr ({self._stdout_log(name)}) ---\n{tail(self._stdout_log(name), 15)}"
                )

    def _spawn(self, name: str, argv: list[Arg]) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("CEPH_ARGS", "CEPH_CONF")}
        self.procs[name] = spawn(argv, self._stdout_log(name), env=env, pidfile=self._pidfile(name))

    def _http_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2) as resp:
                return bool(resp.status < 500)
        except urllib.error.HTTPError as exc:  # any S3 error document means the frontend is up
            return exc.code < 500
        except OSError:
            return False

    def _put_works(self) -> bool:
        client = self.s3_client(retries=1)  # wait_until does the retrying
        bucket = f"devstack-probe-{secrets.token_hex(4)}"
        client.create_bucket(Bucket=bucket)
        try:
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            client.delete_object(Bucket=bucket, Key="probe")
        finally:
            with contextlib.suppress(Exception):
                client.delete_bucket(Bucket=bucket)
        return True

    # -- one-time cluster build ------------------------------------------------------------
    def _mkfs_mon(self, fsid: str) -> None:
        authtool = find_ceph_tool("ceph-authtool")
        run_tool([authtool, "--create-keyring", self.keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"])
        run_tool([authtool, self.keyring, "--gen-key", "-n", "client.admin",
                  "--cap", "mon", "allow *", "--cap", "osd", "allow *",
                  "--cap", "mgr", "allow *", "--cap", "mds", "allow *"])
        monmap = self.data_dir / "monmap"
        run_tool([find_ceph_tool("monmaptool"), "--create", "--clobber", "--fsid", fsid,
                  "--addv", MON_ID, f"[v1:127.0.0.1:{self.mon_port}]", monmap])
        run_tool([find_ceph_tool("ceph-mon"), "-c", self.conf, "--mkfs", "-i", MON_ID,
                  "--monmap", monmap, "--keyring", self.keyring], log_path=self._log("mon." + MON_ID))

    def _mkfs_osd(self, osd_uuid: str) -> None:
        out = self._ceph("osd", "new", osd_uuid).stdout.strip()
        if out != OSD_ID:
            raise ServerError(f"ceph osd new returned id {out!r}, expected {OSD_ID}")
        self._ceph("osd", "crush", "add", f"osd.{OSD_ID}", "1.0", "root=default")
        run_tool([find_ceph_tool("ceph-osd"), "-c", self.conf, "-i", OSD_ID, "--mkfs", "--osd-uuid", osd_uuid],
                 timeout=120, log_path=self._log("osd." + OSD_ID))

    def _move_mon(self, fsid: str) -> None:
        """The monitor's address is stored in its monmap: rewrite it for a new port."""
        monmap = self.data_dir / "monmap"
        mon = find_ceph_tool("ceph-mon")
        run_tool([mon, "-c", self.conf, "-i", MON_ID, "--extract-monmap", monmap])
        monmaptool = find_ceph_tool("monmaptool")
        run_tool([monmaptool, "--rm", MON_ID, monmap])  # one call applies --addv before --rm
        run_tool([monmaptool, "--addv", MON_ID, f"[v1:127.0.0.1:{self.mon_port}]", monmap])
        run_tool([mon, "-c", self.conf, "-i", MON_ID, "--inject-monmap", monmap])

    def _ensure_user(self) -> None:
        """The S3 user with exactly our keys; safe to repeat on every start."""
        admin = find_ceph_tool("radosgw-admin")
        base: list[Arg] = [admin, "-c", self.conf]
        info = run_tool(base + ["user", "info", f"--uid={self.uid}"], check=False, timeout=60)
        if info.returncode != 0:
            run_tool(base + ["user", "create", f"--uid={self.uid}", "--display-name=Trigger Hub dev",
                             f"--access-key={self.access_key}", f"--secret-key={self.secret_key}"],
                     timeout=60, log_path=self._log("client.admin"))
            return
        keys = {k["access_key"]: k["secret_key"] for k in json.loads(info.stdout).get("keys", [])}
        if keys.get(self.access_key) != self.secret_key:
            run_tool(base + ["key", "create", f"--uid={self.uid}", "--key-type=s3",
                             f"--access-key={self.access_key}", f"--secret-key={self.secret_key}"],
                     timeout=60, log_path=self._log("client.admin"))

    def _ceph(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_tool([find_ceph_tool("ceph"), "-c", self.conf, "--connect-timeout", "30", *args],
                        timeout=90, log_path=self._log("mon." + MON_ID))

    def _write_conf(self, fsid: str) -> None:
        d = self.data_dir
        self.conf.write_text(
            f"""# Written by devstack on every start; edit devstack/rgw.py instead.
[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{self.mon_port}
mon initial members = {MON_ID}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
ms bind msgr2 = false
keyring = {self.keyring}
run dir = {self.run_dir}
admin socket = {self.run_dir}/$name.asok
pid file = {self.run_dir}/$name.pid
log file = {self.log_dir}/$name.log
mon cluster log file = {self.log_dir}/cluster.log
crash dir = {d}/crash
mon data = {self._mon_data()}
osd data = {self._osd_data()}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
# A nearly full disk must not stop a dev/test monitor.
mon data avail crit = 1
mon data avail warn = 2
# Keep the logs readable (the default dumps every RocksDB option on each start).
debug rocksdb = 1/5
debug bluefs = 1/5
debug bdev = 1/5
debug bluestore = 1/5

[osd]
osd objectstore = bluestore
bluestore block path = {self._block_file()}
bluestore block create = true
bluestore block size = 10737418240
osd memory target = 1073741824
# At start-up the OSD would send "crush create-or-move" and "set-device-class" commands; with auth
# off these can race the monmap and go out with a null fsid ("wrong fsid"), and the OSD exits.
# The one-time placement is done by devstack instead (ceph osd crush add), see _mkfs_osd.
osd crush update on start = false
osd class update on start = false

[{RGW_NAME}]
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port}
rgw data = {self._rgw_data()}
rgw thread pool size = 64
"""
        )

    # -- state and paths --------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        if not (self._mon_data() / "store.db").exists() or not self._block_file().exists():
            return None
        return state if isinstance(state, dict) else None

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def _wipe(self) -> None:
        for sub in ("mon", "osd", "rgw", "run", "crash", "monmap", "keyring", STATE_FILE):
            path = self.data_dir / sub
            if path.is_dir():
                shutil.rmtree(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _mon_data(self) -> Path:
        return self.data_dir / "mon" / f"ceph-{MON_ID}"

    def _osd_data(self) -> Path:
        return self.data_dir / "osd" / f"ceph-{OSD_ID}"

    def _block_file(self) -> Path:
        # Outside the OSD dir: bluestore puts a "block" symlink there pointing at this file.
        return self.data_dir / "osd" / "block.img"

    def _rgw_data(self) -> Path:
        return self.data_dir / "rgw"

    def _log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _stdout_log(self, name: str) -> Path:
        return self.log_dir / f"{name}.stdout.log"

    def _pidfile(self, name: str) -> Path:
        return self.data_dir / f"{name}.pid"


__all__ = ["CephRGW", "ServerError"]
