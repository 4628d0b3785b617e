"""Network for functions that ask for it: their own namespace, public egress, nothing of ours.

A worker without ``network`` gets ``bwrap --unshare-net``: a namespace with only a loopback that
nothing else shares. A worker with ``network`` gets the same empty namespace, then, before the
function's code is imported, two things the hub sets up from outside (:class:`Attachment`):

- **pasta** (Debian ``passt``) joins the namespace and gives it an interface whose traffic it
  turns into ordinary sockets on the host: a user-mode stack, no bridge, no veth, no iptables on
  the host. Chosen over ``slirp4netns`` because it can join a namespace someone else made (bwrap's)
  by path, starts in ~20 ms, and never maps the host's loopback unless told: ``-t/-u none`` (no
  port of the namespace is published on the host), ``-T/-U none`` (no host loopback port is
  reachable, except the ones an ``allow`` entry names: ``-T PORT``), ``--no-map-gw`` (the gateway
  is not an alias of the host). The namespace gets its own addresses (10.0.2.15, and a ULA for
  IPv6 when the host has IPv6), not copies of the host's: the function learns nothing about the
  host, and the host's own addresses are ordinary destinations that the rules below refuse. DNS
  goes to ``169.254.1.1:53`` (UDP), which pasta answers from the host's first resolver
  (``--dns-forward``); the sandbox's ``/etc/resolv.conf`` says so.
- **nftables** rules, loaded into the namespace by ``nft`` (``nsenter --net``) while pasta
  starts. pasta would otherwise connect anywhere the host can, so filtering has to happen where
  the function's packets are still packets: in the namespace's output hook, out of the function's
  reach (it has no capabilities there, and may not create namespaces of its own). Rules, in order:
  the namespace's own loopback; the DNS forwarder; ``allow`` entries naming one address; the
  hub's own servers (``deny_addresses``, even when public) and every address of the host,
  refused; ``allow`` entries naming networks; every special-purpose range (RFC 1918, CGNAT,
  loopback, link-local with 169.254.169.254, documentation, benchmarking, multicast, ULA, NAT64,
  6to4, ...), refused. TCP gets a reset (``ECONNREFUSED`` at once), the rest an ICMP "administratively
  prohibited": nothing hangs. Everything else (public egress) is accepted.

Why not a seccomp filter on ``connect``, or routes: seccomp cannot read the address behind a
pointer, and "unreachable" routes know no ports. Why not filter on the host: pasta's sockets are
the host's, indistinguishable from the hub's own.

How a namespace gets its pasta and rules, and when (ahead of time, or while the worker starts),
is :mod:`hub.sandbox.netns`; this module says what they are.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

import structlog

from hub.sandbox.base import NetworkPolicy

log = structlog.get_logger("hub.sandbox.network")

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
NS_ADDR4, NS_PREFIX4, NS_GW4 = "10.0.2.15", 24, "10.0.2.2"
NS_ADDR6, NS_GW6 = "fd42:6875:6200::2", "fd42:6875:6200::1"
DNS_FORWARD = "169.254.1.1"
# Not globally reachable (IANA special-purpose registries), for either family.
DENIED_RANGES: tuple[str, ...] = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "2001::/23", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
)
_RESOLVE_TTL_S = 30.0
_DEFAULT_PORTS = {"http": 80, "https": 443, "mongodb": 27017, "kafka": 9092}


def parse_server_addresses(text: str) -> list[tuple[str, int | None]]:
    """(host, port) of the servers in a connection string: ``mongodb://u:p@h1:1,h2:2/db``,
    ``h1:9092,h2:9092`` (Kafka), ``http://127.0.0.1:9000`` (S3)..."""
    text = text.strip()
    scheme = ""
    if "://" in text:
        scheme, _, text = text.partition("://")
    text = text.rpartition("@")[2] if "@" in text.split("/", 1)[0] else text
    text = text.split("/", 1)[0].split("?", 1)[0]
    default = _DEFAULT_PORTS.get(scheme.lower().split("+")[0])
    out: list[tuple[str, int | None]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            split = urlsplit("//" + part)
            host, port = split.hostname, split.port
        except ValueError:
            continue
        if host:
            out.append((host, port if port is not None else default))
    return out


def host_addresses() -> list[IPNet]:
    """Every address (or local route) of the host, read from the kernel (no ``ip`` process)."""
    found: set[IPNet] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    last = ""
    for line in lines:
        s = line.strip()
        if s.startswith("|--"):
            last = s[3:].strip()
        elif s.endswith("host LOCAL") and last:
            try:
                found.add(ipaddress.ip_network(f"{last}{s.split()[0]}", strict=False))
            except ValueError:
                pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(ipaddress.ip_network(":".join(raw[i:i + 4] for i in range(0, 32, 4))))
    except (OSError, ValueError, IndexError):
        pass
    return sorted(found, key=lambda n: (n.version, n))


def host_has_ipv6() -> bool:
    """A default IPv6 route: pasta then offers IPv6, and the namespace gets an IPv6 address."""
    try:
        return any(line.startswith("0" * 32 + " 00 ")
                   for line in Path("/proc/net/ipv6_route").read_text().splitlines()
                   if not line.rstrip().endswith(" lo"))
    except OSError:
        return False


def _collapse(nets: Iterable[IPNet], version: int) -> list[str]:
    picked: list[Any] = [n for n in nets if n.version == version]  # one family: collapsible
    return [str(n) for n in ipaddress.collapse_addresses(picked)]


def _ports(lo: int | None, hi: int | None) -> str:
    if lo is None or hi is None:
        return ""
    return f" meta l4proto {{ tcp, udp }} th dport {lo if lo == hi else f'{lo}-{hi}'}"


@dataclass(frozen=True)
class Rule:
    """One destination: an address or network, and a port range (None: every port)."""

    net: IPNet
    port_min: int | None = None
    port_max: int | None = None

    @property
    def exact(self) -> bool:
        """One address (an IP or a resolved name), not a network."""
        return self.net.num_addresses == 1

    def nft(self, verdict: str) -> str:
        fam = "ip" if self.net.version == 4 else "ip6"
        return f"    {fam} daddr {self.net}{_ports(self.port_min, self.port_max)} {verdict}\n"


def ruleset(allow: Sequence[Rule], deny: Sequence[Rule], host: Iterable[IPNet]) -> str:
    """The namespace's nftables ruleset (see the module docstring for the order and why).

    The hub's servers (``deny``) and the host's own addresses are refused before any ``allow``
    network: only an entry naming the exact address (an IP or a name) opens one of them, so
    allowing "the office LAN" never opens the hub's MongoDB or the host's ports by accident."""
    out = ["table inet hub_sandbox {\n",
           "  chain refuse {\n",
           "    meta l4proto tcp reject with tcp reset\n",
           "    reject with icmpx type admin-prohibited\n",
           "  }\n",
           "  chain output {\n",
           "    type filter hook output priority 0; policy accept;\n",
           '    oifname "lo" accept\n',
           # IPv6 needs neighbour discovery with the (pasta-emulated) router; it stays on the link
           "    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept\n",
           f"    ip daddr {DNS_FORWARD} udp dport 53 accept\n"]
    reject = "jump refuse"
    out += [a.nft("accept") for a in allow if a.exact]
    out += [d.nft(reject) for d in deny]
    host = list(host)
    for version, fam in ((4, "ip"), (6, "ip6")):
        nets = _collapse(host, version)
        if nets:
            out.append(f"    {fam} daddr {{ {', '.join(nets)} }} {reject}\n")
    out += [a.nft("accept") for a in allow if not a.exact]
    for version, fam in ((4, "ip"), (6, "ip6")):
        nets = _collapse((ipaddress.ip_network(r) for r in DENIED_RANGES), version)
        out.append(f"    {fam} daddr {{ {', '.join(nets)} }} {reject}\n")
    out += ["  }\n", "}\n"]
    return "".join(out)


def _loopback_ports(ranges: Iterable[tuple[int, int]]) -> str:
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in merged) or "none"


@dataclass
class NetworkConfig:
    """Pool-wide: the tools, the hub's own servers (resolved at start) and a resolver cache."""

    pasta: str
    nft: str
    nsenter: str
    resolv_conf: Path  # bound over /etc/resolv.conf in network workers
    deny: list[Rule] = field(default_factory=list)
    ipv6: bool = False
    as_root: bool = True
    _names: dict[str, tuple[float, list[IPNet]]] = field(default_factory=dict)

    @classmethod
    async def create(cls, scratch: Path, deny_addresses: Sequence[str], *,
                     as_root: bool) -> NetworkConfig:
        """Raises :class:`NetworkUnavailable` when a tool is missing (says which, and how to fix)."""
        tools = {name: shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
                 for name in ("pasta", "nft", "nsenter")}
        missing = [n for n, p in tools.items() if p is None]
        if missing:
            raise NetworkUnavailable(
                f"{', '.join(missing)} not found: functions with network need Debian's passt (pasta) "
                "and nftables (apt-get install passt nftables; nsenter is in util-linux)")
        scratch.mkdir(parents=True, exist_ok=True)
        resolv = scratch / "resolv.conf"
        resolv.write_text(_resolv_conf())
        os.chmod(resolv, 0o644)
        cfg = cls(pasta=str(tools["pasta"]), nft=str(tools["nft"]), nsenter=str(tools["nsenter"]),
                  resolv_conf=resolv, ipv6=host_has_ipv6(), as_root=as_root)
        for text in deny_addresses:
            for host, port in parse_server_addresses(text or ""):
                for net in await cfg.resolve(host):
                    if not net.is_loopback:  # loopback is never reachable unless allowed anyway
                        cfg.deny.append(Rule(net, port, port))
        return cfg

    async def resolve(self, host: str) -> list[IPNet]:
        """Addresses of a name (cached briefly: a cold start should not wait for DNS each time)."""
        try:
            return [ipaddress.ip_network(host)]
        except ValueError:
            pass
        hit = self._names.get(host)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM), 5.0)
            nets = sorted({ipaddress.ip_network(str(i[4][0]).split("%")[0]) for i in infos},
                          key=lambda n: (n.version, n))
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            log.warning("cannot resolve a network address; it stays closed", host=host, error=str(exc))
            nets = []
        self._names[host] = (time.monotonic() + _RESOLVE_TTL_S, nets)
        return nets

    async def plan(self, policy: NetworkPolicy) -> tuple[str, str]:
        """(nftables ruleset, pasta ``-T`` spec) for one worker of ``policy``."""
        allow: list[Rule] = []
        loop_ports: list[tuple[int, int]] = []
        for dest in policy.allow:
            for net in await self.resolve(dest.host):
                if net.is_loopback:
                    if dest.port_min is None or dest.port_max is None:
                        log.warning("a name in network.allow resolves to loopback and has no "
                                    "port; it stays closed", host=dest.host)
                        continue
                    loop_ports.append((dest.port_min, dest.port_max))
                else:
                    allow.append(Rule(net, dest.port_min, dest.port_max))
        return ruleset(allow, self.deny, host_addresses()), _loopback_ports(loop_ports)

    def pasta_argv(self, netns: str, userns: str | None, tcp_ns: str, ready_fd: int) -> list[str]:
        """pasta for the namespace at path ``netns`` (``userns``: the user namespace owning it,
        when the hub is not root and so must join that to act on it)."""
        a = [self.pasta, "--config-net", "--foreground", "--quiet",
             "-t", "none", "-u", "none", "-T", tcp_ns, "-U", "none", "--no-map-gw",
             "-a", NS_ADDR4, "-n", str(NS_PREFIX4), "-g", NS_GW4, "--dns-forward", DNS_FORWARD,
             "-P", f"/proc/self/fd/{ready_fd}", "--netns", netns]
        if self.ipv6:
            a += ["-a", NS_ADDR6, "-g", NS_GW6]
        a += ["--runas", "0"] if userns is None else ["--userns", userns]
        return a

    def nft_argv(self, netns: str, userns: str | None) -> list[str]:
        ns = [f"--net={netns}"]
        if userns is not None:
            ns = [f"--user={userns}", "--preserve-credentials", *ns]
        return [self.nsenter, *ns, "--", self.nft, "-f", "-"]


class NetworkUnavailable(RuntimeError):
    """The network of a function cannot be set up (tool missing, pasta or nft failed)."""


def _resolv_conf() -> str:
    keep = []
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            if line.split()[:1] in (["search"], ["domain"], ["options"]):
                keep.append(line)
    except OSError:
        pass
    return f"# written by the hub: pasta forwards this address to the host's resolver\n" \
           f"nameserver {DNS_FORWARD}\n" + "".join(k + "\n" for k in keep)
