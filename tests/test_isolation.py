"""Sandbox depth (issue 16, sections 2, 5 and 6): what a hostile function can reach, real bwrap.

Functions run in real bubblewrap workers through :class:`SandboxPool`; the network ones get a real
pasta and real nftables rules. The test starts its own TCP and UDP servers on the host (bound to
every address, both families) and counts what reaches them: "refused" means the function got an
error *and* the server saw nothing. Errors are checked by kind (refused, unreachable), never by
time: a filtered destination answers at once, so a timeout is itself a failure.

What cannot be tested here: public egress (there is no internet on these machines; a public
destination is only checked to be absent from every refusing rule), and the hub's servers on a
public address (the rule for ``deny_addresses`` is the same rule as for the host's own addresses,
which is tested end to end; the resolution of connection strings into rules is tested as such).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import hub.sandbox.network as netmod
from hub.sandbox import seccomp
from hub.sandbox.base import NetworkPolicy, Status
from hub.sandbox.pool import SandboxPool, SandboxUnavailable
from hub.spec.models import FunctionSpec
from hub.spec.network import NetworkSettingError, network_setting
from tests.test_sandbox import ctx, make_pool, ok, until, write_fn

pytestmark = pytest.mark.timeout(120)

# x86_64 numbers of every call the filter denies (hub.sandbox.seccomp.DENIED_SYSCALLS)
SYSCALLS = {
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "bpf": 321,
    "keyctl": 250, "add_key": 248, "request_key": 249, "userfaultfd": 323, "perf_event_open": 298,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165, "umount2": 166,
    "pivot_root": 155, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsmount": 432,
    "fsconfig": 431, "fspick": 433, "mount_setattr": 442, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "open_by_handle_at": 304,
}
REFUSED = {"ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH", "EACCES", "EPERM", "EADDRNOTAVAIL"}

PROBE = """
import errno, os, socket
def attempt(host, port):
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return "error:resolve"
    fam, typ, proto, _, addr = infos[0]
    s = socket.socket(fam, typ, proto)
    s.settimeout(8)
    try:
        s.connect(addr)
        return "connected:" + s.recv(64).decode("latin-1")
    except socket.timeout:
        return "error:TIMEOUT"
    except OSError as exc:
        return "error:" + (errno.errorcode.get(exc.errno) or repr(exc))
    finally:
        s.close()

def handler(event, context):
    for host, port in event.get("udp", []):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        u = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            u.sendto(b"udp-from-function", (host, port))
        except OSError:
            pass
        u.close()
    return {f"{h}|{p}": attempt(h, p) for h, p in event.get("tcp", [])}
"""


@dataclass
class Targets:
    """One dual-stack TCP server per name (every address of the host) and one UDP socket; what
    reached them. (Not called "servers": that fixture name means the suite's real servers.)"""

    ports: dict[str, int] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    udp_port: int = 0
    udp_seen: list[bytes] = field(default_factory=list)
    closers: list[Any] = field(default_factory=list)


def _dual_stack(kind: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0))
    return s


@pytest.fixture(scope="module")
async def targets() -> AsyncIterator[Targets]:
    srv = Targets()
    for name in ("allowed", "other", "store"):
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, name: str = name) -> None:
            srv.seen.append(name)
            w.write(f"banner-{name}".encode())
            await w.drain()
            w.close()

        sock = _dual_stack(socket.SOCK_STREAM)
        server = await asyncio.start_server(handle, sock=sock)
        srv.ports[name] = sock.getsockname()[1]
        srv.closers.append(server)
    udp = _dual_stack(socket.SOCK_DGRAM)
    udp.setblocking(False)
    srv.udp_port = udp.getsockname()[1]
    loop = asyncio.get_running_loop()
    loop.add_reader(udp.fileno(), lambda: srv.udp_seen.append(udp.recv(100)))
    yield srv
    loop.remove_reader(udp.fileno())
    udp.close()
    for s in srv.closers:
        s.close()


def host_ips() -> list[str]:
    """The host's own addresses that are not loopback or link-local (fail if there is none)."""
    ips = [str(n.network_address) for n in netmod.host_addresses()
           if n.num_addresses == 1 and not n.is_loopback and not n.is_link_local]
    assert ips, "the host has no non-loopback address to test with"
    return ips


async def _pool(tmp: Path, targets: Targets, spares: int) -> SandboxPool:
    store = f"mongodb://hub:secret@{host_ips()[0]}:{targets.ports['store']}/hub?replicaSet=rs0"
    return await make_pool(tmp, "bwrap", idle_ttl_s=30.0, network_spares=spares,
                           deny_addresses=[store, "127.0.0.1:9092", "http://127.0.0.1:9000"])


@pytest.fixture(scope="module")
async def spare_pool(tmp_path_factory: pytest.TempPathFactory, targets: Targets) -> AsyncIterator[SandboxPool]:
    """Network namespaces wired ahead of time (the hub's default when it runs as root)."""
    p = await _pool(tmp_path_factory.mktemp("isolation"), targets, 1)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def fresh_pool(tmp_path_factory: pytest.TempPathFactory, targets: Targets) -> AsyncIterator[SandboxPool]:
    """Every namespace made by bwrap and wired while the worker starts."""
    p = await _pool(tmp_path_factory.mktemp("isolation-fresh"), targets, 0)
    yield p
    await p.close()


@pytest.fixture(params=["spare", "fresh"])
def pool(request: pytest.FixtureRequest) -> SandboxPool:
    """Both ways a worker gets its network namespace (hub.sandbox.netns)."""
    p: SandboxPool = request.getfixturevalue(f"{request.param}_pool")
    return p


def policy(*allow: str) -> NetworkPolicy:
    setting = network_setting({"allow": list(allow)})
    assert not isinstance(setting, bool)
    return NetworkPolicy(setting)


async def probe(p: SandboxPool, tmp: Path, network: bool | NetworkPolicy,
                tcp: list[tuple[str, int]], udp: list[tuple[str, int]] | None = None) -> dict[str, str]:
    fn = write_fn(tmp, PROBE, network=network, timeout_s=30.0)
    rep = await p.invoke(fn, {"tcp": tcp, "udp": udp or []}, ctx())
    result: dict[str, str] = ok(rep)
    return result


def refused(result: str) -> bool:
    return result.startswith("error:") and result[6:] in REFUSED


async def still_serving(p: SandboxPool, tmp: Path) -> None:
    fn = write_fn(tmp, "def handler(event, context):\n    return 'fine'\n")
    assert ok(await p.invoke(fn, {}, ctx())) == "fine"


# --------------------------------------------------------------------------- network: true


async def test_default_network_reaches_none_of_the_host(pool: SandboxPool, targets: Targets,
                                                        tmp_path: Path) -> None:
    port = targets.ports["allowed"]
    dests = [("127.0.0.1", port), ("::1", port), ("localhost", port), ("0.0.0.0", port),
               ("::ffff:127.0.0.1", port)]
    dests += [(ip, port) for ip in host_ips()]
    dests += [(f"::ffff:{ip}", port) for ip in host_ips() if ":" not in ip]
    # the cloud metadata address, private, CGNAT, ULA and link-local ranges, the DNS forwarder by TCP
    dests += [("169.254.169.254", 80), ("10.0.0.1", 80), ("172.16.0.1", 80), ("192.168.0.1", 80),
                ("100.64.0.1", 80), ("fd00::1", 80), (netmod.DNS_FORWARD, 53),
                (netmod.NS_GW4, 80)]
    udp = [("127.0.0.1", targets.udp_port), *[(ip, targets.udp_port) for ip in host_ips()],
           (netmod.DNS_FORWARD, targets.udp_port)]
    result = await probe(pool, tmp_path, True, dests, udp)
    assert all(refused(r) for r in result.values()), result
    assert targets.seen == [] and targets.udp_seen == []


async def test_the_hubs_own_servers_are_refused(pool: SandboxPool, targets: Targets,
                                                tmp_path: Path) -> None:
    """The store's address (deny_addresses) and the host's addresses stay closed even when an
    allowed network contains them; only an entry naming the exact address opens one."""
    ip = host_ips()[0]
    net = ipaddress.ip_network(f"{ip}/{24 if ':' not in ip else 64}", strict=False)
    store, other = targets.ports["store"], targets.ports["other"]
    result = await probe(pool, tmp_path, policy(str(net)), [(ip, store), (ip, other)])
    assert all(refused(r) for r in result.values()), result
    result = await probe(pool, tmp_path, policy(f"{ip}:{other}" if ":" not in ip else f"[{ip}]:{other}"),
                         [(ip, store), (ip, other)])
    assert refused(result[f"{ip}|{store}"]), result
    assert result[f"{ip}|{other}"] == "connected:banner-other", result
    assert targets.seen == ["other"]
    targets.seen.clear()
    # the store opened only by naming it: explicit, never by default
    exact = f"{ip}:{store}" if ":" not in ip else f"[{ip}]:{store}"
    result = await probe(pool, tmp_path, policy(exact), [(ip, store)])
    assert result[f"{ip}|{store}"] == "connected:banner-store", result
    assert targets.seen == ["store"]
    targets.seen.clear()


async def test_an_allowed_loopback_port_and_only_it(pool: SandboxPool, targets: Targets,
                                                    tmp_path: Path) -> None:
    a, b = targets.ports["allowed"], targets.ports["other"]
    result = await probe(pool, tmp_path, policy(f"127.0.0.1:{a}"),
                         [("127.0.0.1", a), ("localhost", a), ("127.0.0.1", b), (host_ips()[0], a)])
    assert result[f"127.0.0.1|{a}"] == "connected:banner-allowed", result
    assert result[f"localhost|{a}"] == "connected:banner-allowed", result
    assert refused(result[f"127.0.0.1|{b}"]) and refused(result[f"{host_ips()[0]}|{a}"]), result
    assert targets.seen == ["allowed", "allowed"]
    targets.seen.clear()
    # the same function without the entry: nothing
    result = await probe(pool, tmp_path, True, [("127.0.0.1", a)])
    assert refused(result[f"127.0.0.1|{a}"]) and targets.seen == []


DNS = """
import socket
def handler(event, context):
    def gai(name):
        try:
            return sorted({i[4][0] for i in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)})
        except socket.gaierror as exc:
            return "gaierror:%d" % exc.errno
    return {"resolv": open("/etc/resolv.conf").read(),
            "names": {n: gai(n) for n in event["names"]}}
"""


def _gai(name: str) -> Any:
    try:
        return sorted({str(i[4][0]) for i in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)})
    except socket.gaierror as exc:
        return f"gaierror:{exc.errno}"


async def test_name_resolution_works(pool: SandboxPool, tmp_path: Path) -> None:
    hosts_names = [w for line in Path("/etc/hosts").read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#")
                   for w in line.split()[1:] if w != "localhost"]
    # a name in /etc/hosts, and one the resolver must answer itself (no internet: .invalid is
    # answered "no such name" by any resolver; without DNS the answer would be "try again")
    names = ["localhost", *hosts_names[:1], "hub-isolation-test.invalid"]
    fn = write_fn(tmp_path, DNS, network=True)
    got = ok(await pool.invoke(fn, {"names": names}, ctx()))
    assert f"nameserver {netmod.DNS_FORWARD}" in got["resolv"]
    assert "127.0.0.1" in got["names"]["localhost"]
    for name in names:  # the sandbox resolves exactly as the host does
        assert got["names"][name] == _gai(name), (name, got)
    assert got["names"]["hub-isolation-test.invalid"] != "gaierror:%d" % socket.EAI_AGAIN


# --------------------------------------------------------------------------- network: false


NO_NET = """
import socket
def handler(event, context):
    out = {"interfaces": [n for _, n in socket.if_nameindex()]}
    for host, port in event["tcp"]:
        try:
            socket.create_connection((host, port), timeout=5).close()
            out[host] = "connected"
        except socket.timeout:
            out[host] = "TIMEOUT"
        except OSError as exc:
            out[host] = type(exc).__name__
    try:
        socket.getaddrinfo("hub-isolation-test.invalid", 80)
        out["dns"] = "resolved"
    except socket.gaierror as exc:
        out["dns"] = exc.errno
    return out
"""


async def test_no_network_means_none(pool: SandboxPool, targets: Targets, tmp_path: Path) -> None:
    port = targets.ports["allowed"]
    fn = write_fn(tmp_path, NO_NET)
    got = ok(await pool.invoke(fn, {"tcp": [("127.0.0.1", port), (host_ips()[0], port),
                                            ("169.254.169.254", 80)]}, ctx()))
    assert got["interfaces"] == ["lo"], got
    assert got["127.0.0.1"] == "ConnectionRefusedError"
    assert got[host_ips()[0]] == "OSError" and got["169.254.169.254"] == "OSError"  # unreachable
    assert got["dns"] == socket.EAI_AGAIN  # no resolver can be reached
    assert targets.seen == []


# --------------------------------------------------------------------------- hostile attempts


LISTEN = """
import socket
def handler(event, context):
    s = socket.socket()
    s.bind(("0.0.0.0", event["port"]))
    s.listen()
    return s.getsockname()[1]
"""


async def test_a_port_opened_inside_is_not_published_on_the_host(pool: SandboxPool,
                                                                 tmp_path: Path) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    fn = write_fn(tmp_path, LISTEN, network=True)
    assert ok(await pool.invoke(fn, {"port": port}, ctx())) == port  # listening, worker kept warm
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


TAMPER = """
import ctypes, os, socket, subprocess
def handler(event, context):
    out = {}
    for argv in (["/usr/sbin/nft", "flush", "ruleset"], ["/usr/sbin/nft", "list", "ruleset"]):
        try:
            p = subprocess.run(argv, capture_output=True, timeout=10)
            out[argv[1]] = p.returncode
        except OSError as exc:
            out[argv[1]] = type(exc).__name__
    libc = ctypes.CDLL(None, use_errno=True)
    out["unshare"] = libc.unshare(0x10000000 | 0x40000000) == 0 or ctypes.get_errno()  # USER|NET
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        out["raw"] = "opened"
        s.close()
    except OSError as exc:
        out["raw"] = type(exc).__name__
    try:
        socket.create_connection((event["host"], event["port"]), timeout=8).close()
        out["after"] = "connected"
    except OSError as exc:
        out["after"] = type(exc).__name__
    return out
"""


async def test_the_rules_cannot_be_undone_from_inside(pool: SandboxPool, targets: Targets,
                                                      tmp_path: Path) -> None:
    fn = write_fn(tmp_path, TAMPER, network=True)
    got = ok(await pool.invoke(fn, {"host": host_ips()[0], "port": targets.ports["other"]}, ctx()))
    assert got["flush"] not in (0, None) and got["list"] not in (0, None), got  # no CAP_NET_ADMIN
    assert got["unshare"] is not True, got  # no namespace of its own to escape into
    assert got["raw"] == "PermissionError", got
    assert got["after"] == "ConnectionRefusedError" and targets.seen == [], got


def _pasta_children() -> set[int]:
    """pasta processes that are children of this (the hub's) process."""
    kids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            kids |= {int(p) for p in Path(f"/proc/self/task/{task}/children").read_text().split()}
        except OSError:
            pass
    found = set()
    for pid in kids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("pass"):
                found.add(pid)
        except OSError:
            pass
    return found


async def test_pasta_goes_with_its_worker(tmp_path_factory: pytest.TempPathFactory,
                                          tmp_path: Path) -> None:
    before = _pasta_children()
    p = await make_pool(tmp_path_factory.mktemp("pasta-life"), "bwrap")
    try:
        fns = [write_fn(tmp_path, f"def handler(event, context):\n    return {i}\n", network=True)
               for i in range(3)]
        assert [ok(r) for r in await asyncio.gather(*(p.invoke(fn, {}, ctx()) for fn in fns))] == [0, 1, 2]
        assert len(_pasta_children() - before) >= 3  # one per worker (and maybe a spare)
        for fn in fns:
            await p.retire(fn.name)
        await until(lambda: len(_pasta_children() - before) <= 1)  # the spare at most
    finally:
        await p.close()
    await until(lambda: not (_pasta_children() - before))


async def test_a_network_function_never_falls_back_to_the_hosts_network(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = netmod.shutil.which
    monkeypatch.setattr(netmod.shutil, "which", lambda name: None if name == "pasta" else real(name))
    p = await make_pool(tmp_path_factory.mktemp("nopasta"), "bwrap")
    try:
        fn = write_fn(tmp_path, PROBE, network=True)
        rep = await p.invoke(fn, {"tcp": []}, ctx())
        assert rep.status is Status.failed, rep
        assert rep.error and rep.error["type"] == "NetworkUnavailable", rep.error
        assert "passt" in rep.error["message"] and "apt-get install" in rep.error["message"]
        await still_serving(p, tmp_path)  # functions without network are unaffected
    finally:
        await p.close()


# --------------------------------------------------------------------------- seccomp


SYSCALL = """
import ctypes
def handler(event, context):
    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    for name, nr in event["calls"].items():
        ctypes.set_errno(0)
        rc = libc.syscall(nr, 0, 0, 0, 0, 0)
        out[name] = [rc, ctypes.get_errno()]
    return out
"""


@pytest.mark.parametrize("network", [False, True])
async def test_each_denied_syscall_fails_with_eperm(pool: SandboxPool, tmp_path: Path,
                                                    network: bool) -> None:
    assert set(SYSCALLS) == set(seccomp.DENIED_SYSCALLS)
    fn = write_fn(tmp_path, SYSCALL, network=network)
    got = ok(await pool.invoke(fn, {"calls": SYSCALLS}, ctx()))
    assert got == {name: [-1, errno.EPERM] for name in SYSCALLS}, got
    await still_serving(pool, tmp_path)


async def test_seccomp_in_process_mode_too(tmp_path_factory: pytest.TempPathFactory,
                                           tmp_path: Path) -> None:
    p = await make_pool(tmp_path_factory.mktemp("proc-seccomp"), "process")
    try:
        fn = write_fn(tmp_path, SYSCALL)
        calls = {k: SYSCALLS[k] for k in ("io_uring_setup", "keyctl", "userfaultfd", "bpf", "ptrace")}
        got = ok(await p.invoke(fn, {"calls": calls}, ctx()))
        assert got == {name: [-1, errno.EPERM] for name in calls}, got
    finally:
        await p.close()


# --------------------------------------------------------------------------- no silent fallback


@pytest.mark.parametrize("isolation", ["auto", "bwrap"])
async def test_refuses_to_start_without_bubblewrap(tmp_path: Path, isolation: str) -> None:
    p = SandboxPool(isolation, data_dir=tmp_path, bwrap_path=str(tmp_path / "no-such-bwrap"))
    with pytest.raises(SandboxUnavailable) as info:
        await p.start()
    message = str(info.value)
    assert "no-such-bwrap not found" in message
    assert "apt-get install bubblewrap" in message and "user namespaces" in message
    assert "HUB_SANDBOX=process" in message and "NOT isolated" in message
    await p.close()


async def test_auto_means_bubblewrap(tmp_path: Path) -> None:
    p = await make_pool(tmp_path, "auto")
    try:
        assert p.isolation == "bwrap"
        await still_serving(p, tmp_path)
    finally:
        await p.close()


async def test_the_hub_is_not_dumpable_and_bwrap_still_works(pool: SandboxPool, tmp_path: Path) -> None:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    assert prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE: the pool made us undumpable at start
    await still_serving(pool, tmp_path)  # workers, bwrap and pasta are unaffected
    fn = write_fn(tmp_path, "def handler(event, context):\n    return 1\n", network=True)
    assert ok(await pool.invoke(fn, {}, ctx())) == 1


# --------------------------------------------------------------------------- the setting itself


@pytest.mark.parametrize("entry, says", [
    ("127.0.0.1", "a loopback destination needs its port"),
    ("localhost", "a loopback destination needs its port"),
    ("127.0.0.0/8:80", "only 127.0.0.1, ::1 or localhost"),
    ("10.1.2.3/16", "did you mean 10.1.0.0/16"),
    ("0.0.0.0/0", "too wide"),
    ("http://db.internal:5432", "not a URL"),
    ("db.internal:0", "ports are 1 to 65535"),
    ("db.internal:70000", "ports are 1 to 65535"),
    ("10.0.0.5:9-1", "runs backwards"),
    ("10.0.0", "incomplete IPv4 address"),
    ("db internal", "spaces"),
    ("fd00::5:443:", "not an IPv6 address"),
    ("[10.0.0.1]:5432", "brackets are only for IPv6"),
    ("-db.internal", "neither an IP address"),
    ("0.0.0.0", "no destination"),
    ("localhost:1-1000", "at most 64 loopback ports"),
])
def test_bad_allow_entries_are_refused(entry: str, says: str) -> None:
    spec = {"handler": "main.handler", "code": {"files": {"main.py": "x = 1"}}}
    with pytest.raises(ValidationError) as info:
        FunctionSpec.model_validate({**spec, "network": {"allow": [entry]}})
    text = str(info.value)
    assert says in text and "e.g." in text and '"10.0.0.5:5432"' in text, text
    assert text.count("validation error") == 1 and "network.bool" not in text


def test_good_allow_entries_are_canonical() -> None:
    spec = {"handler": "main.handler", "code": {"files": {"main.py": "x = 1"}}}
    allow = ["127.0.0.1:9999", "10.0.0.5:5432", "DB.Internal:5432", "10.1.0.0/16", "[FD00::5]:443",
             "fd00::/64", "localhost:80-90"]
    got = FunctionSpec.model_validate({**spec, "network": {"allow": allow}}).model_dump()["network"]
    assert got == {"allow": ["127.0.0.1:9999", "10.0.0.5:5432", "db.internal:5432", "10.1.0.0/16",
                             "[fd00::5]:443", "fd00::/64", "localhost:80-90"]}
    bad: Any
    for bad in ("yes", 1, None, {"allow": "10.0.0.5"}, {"deny": []}):
        with pytest.raises(ValidationError):
            FunctionSpec.model_validate({**spec, "network": bad})


@pytest.mark.parametrize("stored", ["yes", {"allow": ["127.0.0.1"]}, {"allow": "x"}, {"deny": []}, 3])
def test_a_tampered_stored_setting_is_refused(stored: Any) -> None:
    with pytest.raises(NetworkSettingError):
        network_setting(stored)


def test_server_addresses_become_rules() -> None:
    parse = netmod.parse_server_addresses
    assert parse("mongodb://u:p%40ss@db1:27017,[2001:db8::7]:27018/hub?replicaSet=rs0") == [
        ("db1", 27017), ("2001:db8::7", 27018)]
    assert parse("broker-a:9092, broker-b:9093") == [("broker-a", 9092), ("broker-b", 9093)]
    assert parse("https://s3.example.com") == [("s3.example.com", 443)]
    assert parse("http://127.0.0.1:9000/") == [("127.0.0.1", 9000)]


async def test_public_hub_servers_are_refused_before_any_allowed_network(tmp_path: Path) -> None:
    cfg = await netmod.NetworkConfig.create(
        tmp_path, ["mongodb://u:p@8.8.8.8:27017/x", "127.0.0.1:9092", "http://[2001:4860::8888]:9000"],
        as_root=True)
    assert [(str(r.net), r.port_min) for r in cfg.deny] == [("8.8.8.8/32", 27017),
                                                            ("2001:4860::8888/128", 9000)]
    rules, loop_ports = await cfg.plan(policy("8.0.0.0/8", "1.1.1.1:53", "127.0.0.1:8080", "[::1]:8081"))
    lines = rules.splitlines()

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    assert at("ip daddr 1.1.1.1/32 meta l4proto { tcp, udp } th dport 53 accept") \
        < at("ip daddr 8.8.8.8/32 meta l4proto { tcp, udp } th dport 27017 jump refuse") \
        < at("ip daddr 8.0.0.0/8 accept") < at("169.254.0.0/16")
    assert loop_ports == "8080-8081"
    for public in ("1.1.1.1", "8.8.4.4", "2606:4700::1111"):  # public egress stays open
        assert not any(ipaddress.ip_address(public) in ipaddress.ip_network(r) for r in netmod.DENIED_RANGES)
    # the real nft accepts the ruleset (check mode: nothing is changed)
    check = subprocess.run([cfg.nft, "-c", "-f", "-"], input=rules.encode(), capture_output=True, check=False)
    assert check.returncode == 0, check.stderr.decode()


async def test_spares_are_used_and_replaced(spare_pool: SandboxPool, tmp_path: Path) -> None:
    spares = spare_pool._cfg.spares if spare_pool._cfg else None
    assert spares is not None  # the hub runs as root here
    first = write_fn(tmp_path, "def handler(event, context):\n    return 1\n", network=True)
    ok(await spare_pool.invoke(first, {}, ctx()))
    await until(lambda: len(spares.ready) == 1)
    second = write_fn(tmp_path, "def handler(event, context):\n    return 2\n", network=True)
    assert ok(await spare_pool.invoke(second, {}, ctx())) == 2
    (w,) = spare_pool.workers(second.name)
    assert w._net is not None and w._net.ns_fd >= 0 and not w._net.gate  # took the spare
    await until(lambda: len(spares.ready) == 1)  # and another one is ready
