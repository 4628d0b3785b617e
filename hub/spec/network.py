"""What a function's ``network`` setting may say, checked without any I/O.

A function with ``network: true`` gets public egress only (see :mod:`hub.sandbox.network` for how
that is enforced). ``network: {"allow": [...]}`` opens exact destinations on top of that: the
user's own database on a private address, a test server on the host's loopback. Every entry is
checked here, once at ``PUT`` (a 400 that says what is wrong and shows a right value) and again
when the setting comes back from MongoDB, so the sandbox only ever sees well-formed entries.

Grammar of one entry (``PORTS`` is ``N`` or ``N-M``; no ports means every port)::

    10.0.0.5  10.0.0.5:5432  10.1.0.0/16  10.1.0.0/16:5432   IPv4 address or network
    fd00::5   [fd00::5]:5432  fd00::/64   [fd00::/64]:443     IPv6 (brackets when a port follows)
    db.internal  db.internal:5432                              a DNS name, resolved at worker start
    127.0.0.1:9999  [::1]:9999  localhost:9999                 the host's loopback: ports required

Why the refusals: a loopback entry is turned into a port forward from the function's namespace to
the host's loopback, one listening socket per port, so it must name (a few) ports and can only
mean the host's own ``127.0.0.1``/``::1``; networks wider than /8 (IPv4) or /16 (IPv6) would undo
the private-range protection wholesale rather than open a destination; a name whose last label is
numeric (``10.0.0``) is read by the C resolver as an address, so it is refused as ambiguous.

Pure: importable by the pydantic models (``hub.spec.models``) and the registry.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

ALLOW_MAX = 64  # entries in one allow list
ENTRY_MAX = 300  # characters of one entry (a 253-byte name, a port range, brackets)
LOOPBACK_PORTS_MAX = 64  # ports one loopback entry may forward (one socket each in pasta)
MIN_PREFIX = {4: 8, 6: 16}  # the widest network an entry may open
LOOPBACK_NAMES = frozenset({"localhost"})
EXAMPLES = ('"10.0.0.5:5432"', '"db.internal:5432"', '"10.1.0.0/16"', '"[fd00::5]:443"',
            '"127.0.0.1:9999"')
_HINT = ("write HOST[:PORT], IP[:PORT], CIDR[:PORT] or [IPv6]:PORT (PORT may be N or N-M), "
         "e.g. " + ", ".join(EXAMPLES))
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PORTS = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$")


class NetworkSettingError(ValueError):
    """A malformed ``network`` setting; the message names the entry and shows right ones."""


@dataclass(frozen=True)
class AllowEntry:
    """One checked destination. ``host`` is canonical: an IP address, a network in CIDR form
    (host bits clear) or a lower-case DNS name. ``port_min``/``port_max`` are None for every port."""

    host: str
    port_min: int | None = None
    port_max: int | None = None

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The address or network this entry opens; None for a DNS name."""
        try:
            return ipaddress.ip_network(self.host)
        except ValueError:
            return None

    @property
    def loopback(self) -> bool:
        net = self.network
        return self.host in LOOPBACK_NAMES or (net is not None and net.is_loopback)

    def __str__(self) -> str:
        net = self.network
        host = f"[{self.host}]" if net is not None and net.version == 6 and self.port_min else self.host
        if self.port_min is None:
            return host
        ports = str(self.port_min) if self.port_min == self.port_max else f"{self.port_min}-{self.port_max}"
        return f"{host}:{ports}"


def _fail(text: str, problem: str) -> NetworkSettingError:
    shown = text if len(text) <= 80 else text[:80] + "..."
    return NetworkSettingError(f"network.allow entry {shown!r}: {problem}; {_HINT}")


def _ports(text: str, spec: str) -> tuple[int, int]:
    m = _PORTS.match(spec)
    if not m:
        raise _fail(text, f"{spec!r} is not a port or a port range")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise _fail(text, "ports are 1 to 65535")
    if lo > hi:
        raise _fail(text, f"the port range {spec} runs backwards")
    return lo, hi


def _split(text: str) -> tuple[str, str | None]:
    """(host part, port part or None); brackets only around IPv6."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _fail(text, "an opening '[' without its ']'")
        host, rest = text[1:end], text[end + 1:]
        if ":" not in host:
            raise _fail(text, "brackets are only for IPv6 addresses")
        if not rest:
            return host, None
        if not rest.startswith(":") or len(rest) == 1:
            raise _fail(text, "after ']' comes ':PORT'")
        return host, rest[1:]
    if text.count(":") > 1:  # bare IPv6: no port can follow without brackets
        return text, None
    host, sep, port = text.partition(":")
    if sep and not port:
        raise _fail(text, "a ':' without a port after it")
    return host, (port if sep else None)


def _name(text: str, host: str) -> str:
    name = host.lower().rstrip(".") if host.endswith(".") and len(host) > 1 else host.lower()
    if len(name) > 253:
        raise _fail(text, "a DNS name is at most 253 characters")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise _fail(text, f"{host!r} is neither an IP address, a CIDR network nor a DNS name "
                              "(letters, digits and '-' between dots)")
    if labels[-1].isdigit():
        raise _fail(text, f"{host!r} looks like an incomplete IPv4 address")
    return name


def parse_allow_entry(text: Any) -> AllowEntry:
    """One entry of ``network.allow``, checked and made canonical (raises NetworkSettingError)."""
    if not isinstance(text, str):
        raise NetworkSettingError(f"network.allow entries are strings, not {type(text).__name__}; {_HINT}")
    if not text:
        raise _fail(text, "empty")
    if len(text) > ENTRY_MAX:
        raise _fail(text, f"longer than {ENTRY_MAX} characters")
    if text != text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        raise _fail(text, "spaces and control characters are not allowed")
    if "://" in text:
        raise _fail(text, "a destination, not a URL")
    host, port_spec = _split(text)
    lo, hi = _ports(text, port_spec) if port_spec is not None else (None, None)
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    if "/" in host:
        try:
            net = ipaddress.ip_network(host)
        except ValueError as exc:
            try:
                loose = ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise _fail(text, f"not a CIDR network ({exc})") from None
            raise _fail(text, f"host bits are set: did you mean {loose}?") from None
        if net.prefixlen < MIN_PREFIX[net.version]:
            raise _fail(text, f"/{net.prefixlen} is too wide: networks of at most "
                              f"/{MIN_PREFIX[net.version]} may be opened")
        canonical = str(net)
    else:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            if ":" in host:
                raise _fail(text, f"{host!r} is not an IPv6 address") from None
            canonical = _name(text, host)
        else:
            if getattr(addr, "scope_id", None):
                raise _fail(text, "zone indexes (%eth0) are not allowed")
            if addr.is_unspecified:
                raise _fail(text, f"{addr} is no destination")
            net = ipaddress.ip_network(addr)
            canonical = str(addr)
    entry = AllowEntry(canonical, lo, hi)
    if entry.loopback:
        if net is not None and (net.num_addresses > 1 or str(net.network_address) not in ("127.0.0.1", "::1")):
            raise _fail(text, "on the host's loopback only 127.0.0.1, ::1 or localhost can be "
                              "opened, one port or a few (127.0.0.1:9999)")
        if lo is None or hi is None:
            raise _fail(text, "a loopback destination needs its port (127.0.0.1:9999)")
        if hi - lo + 1 > LOOPBACK_PORTS_MAX:
            raise _fail(text, f"at most {LOOPBACK_PORTS_MAX} loopback ports per entry")
    return entry


def check_allow_entry(text: Any) -> str:
    """For pydantic: the entry's canonical text (raises ValueError with a readable message)."""
    return str(parse_allow_entry(text))


def network_setting(value: Any) -> bool | tuple[AllowEntry, ...]:
    """A stored ``network`` setting (false, true or ``{"allow": [...]}``), checked again.

    ``False``: no network. ``True`` or a tuple of entries: public egress plus those entries.
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, dict) and set(value) <= {"allow"}:
        items = value.get("allow") or []
        if not isinstance(items, list):
            raise NetworkSettingError("network.allow must be a list of destinations; " + _HINT)
        if len(items) > ALLOW_MAX:
            raise NetworkSettingError(f"network.allow has more than {ALLOW_MAX} entries")
        return tuple(dict.fromkeys(parse_allow_entry(item) for item in items))
    raise NetworkSettingError('network must be false, true or {"allow": [...]}, e.g. '
                              '{"allow": ["10.0.0.5:5432", "db.internal:5432"]}')
