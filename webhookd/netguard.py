"""Outbound address policy: which IP addresses a delivery may connect to.

Endpoint URLs come from tenants, so without a guard a URL could point the sender at
loopback services, the cloud metadata endpoint or anything else on the private network
(server-side request forgery). This module owns the table of address ranges that are
refused unless the operator lists them in ``security.allow_networks``, the parser for
the numeric host spellings that browsers and libc accept, and the resolver that applies
the policy to every connection the delivery client (webhookd.http1) opens.

The check happens on the addresses that are actually connected to, after name
resolution, and the client is handed exactly the addresses that passed. Checking the
URL up front and resolving again at connect time would let a name that changes its
answer between the two lookups (DNS rebinding) slip through.
"""

from __future__ import annotations

import ipaddress
import socket
import string
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_SETTING = "security.allow_networks"


class BlockedAddress(OSError):
    """Raised when every address of a host is refused.

    It is an OSError because it is one: a refusal to connect, raised where a lookup or a
    connect would raise.
    """

    host: str
    address: str
    category: str

    def __init__(self, host: str, address: str, category: str) -> None:
        self.host = host
        self.address = address
        self.category = category
        message = (
            f"refused to connect to {address} ({category}) for host {host!r}: "
            f"add a network containing it to {_SETTING} to allow it"
        )
        super().__init__(message)
        # What an OSError shows as its reason.
        self.strerror = message

    def __reduce__(self) -> tuple[type[BlockedAddress], tuple[str, str, str]]:
        # OSError pickles its args, which here is the message, not the three fields.
        return (type(self), (self.host, self.address, self.category))


# --- The range table ----------------------------------------------------------------
#
# Written out rather than taken from ipaddress's is_private / is_global flags: what those
# flags cover has changed between Python releases (for example 3.11.10 / 3.12.4 / 3.13
# reworked them for 192.0.0.0/24, 2001::/23 and the embedded-IPv4 prefixes), and a
# security boundary must not move when the interpreter is upgraded. An explicit table
# also gives the operator a precise category name in the error.
#
# Order matters only where ranges overlap: the first match wins.

_V4_RANGES: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(cidr), category)
    for cidr, category in (
        ("0.0.0.0/8", "unspecified"),  # "this network"; connecting to it reaches the host
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "cgnat"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),  # includes cloud metadata at 169.254.169.254
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "ietf-protocol"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4-relay"),  # deprecated anycast relays, RFC 7526
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),  # before 240/4, which contains it
        ("240.0.0.0/4", "reserved"),
    )
)

_V6_RANGES: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(cidr), category)
    for cidr, category in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("100::/64", "discard"),
        ("2001::/32", "teredo"),  # tunnels to an IPv4 relay chosen by the address itself
        ("2001:2::/48", "benchmarking"),
        ("2001:10::/28", "orchid"),  # identifiers, not locators
        ("2001:20::/28", "orchid"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),  # RFC 9637
        ("5f00::/16", "reserved"),  # SRv6 SIDs, RFC 9602, not globally reachable
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)

# Everything outside 2000::/3 that the tables above and below do not name is unassigned
# or reserved by the IETF; no public server lives there.
_V6_GLOBAL_UNICAST = IPv6Network("2000::/3")


def _bits(value: int, start: int, end: int) -> int:
    """Bits [start, end) of a 128-bit value, counting from the most significant bit."""
    return (value >> (128 - end)) & ((1 << (end - start)) - 1)


def _low32(value: int) -> tuple[int, ...]:
    return (_bits(value, 96, 128),)


def _sixtofour(value: int) -> tuple[int, ...]:
    return (_bits(value, 16, 48),)


def _nat64_local(value: int) -> tuple[int, ...]:
    """Every place RFC 6052 may put the IPv4 address under a prefix inside /48.

    The translator's prefix length (48, 56, 64 or 96) cannot be read from the address,
    so each candidate is checked and the address is refused if any of them is.
    """
    return (
        (_bits(value, 48, 64) << 16) | _bits(value, 72, 88),
        (_bits(value, 56, 64) << 24) | _bits(value, 72, 96),
        _bits(value, 72, 104),
        _bits(value, 96, 128),
    )


# IPv6 forms that carry an IPv4 address the packets end up at (through the kernel's
# dual-stack sockets, a NAT64 gateway or a 6to4 tunnel). They are as dangerous as the
# IPv4 address inside, so that address is what gets classified.
_V6_EMBEDDED: tuple[tuple[IPv6Network, str, Callable[[int], tuple[int, ...]]], ...] = (
    (IPv6Network("::ffff:0:0/96"), "ipv4-mapped", _low32),
    (IPv6Network("::ffff:0:0:0/96"), "ipv4-translated", _low32),  # RFC 2765 SIIT
    (IPv6Network("::/96"), "ipv4-compatible", _low32),  # after :: and ::1 above
    (IPv6Network("64:ff9b::/96"), "nat64", _low32),
    (IPv6Network("64:ff9b:1::/48"), "nat64", _nat64_local),
    (IPv6Network("2002::/16"), "6to4", _sixtofour),
)


def embedded_ipv4(ip: IPv6Address) -> tuple[str, tuple[IPv4Address, ...]] | None:
    """The embedding scheme and the IPv4 address(es) an IPv6 address carries, if any."""
    for network, scheme, extract in _V6_EMBEDDED:
        if ip in network:
            return scheme, tuple(IPv4Address(v) for v in extract(int(ip)))
    return None


def _classify_v4(ip: IPv4Address) -> str | None:
    for network, category in _V4_RANGES:
        if ip in network:
            return category
    return None


def _classify_v6(ip: IPv6Address) -> str | None:
    for network, category in _V6_RANGES:
        if ip in network:
            return category
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        scheme, candidates = embedded
        for v4 in candidates:
            inner = _classify_v4(v4)
            if inner is not None:
                return f"{scheme} {inner}"
        return None
    if ip not in _V6_GLOBAL_UNICAST:
        return "reserved"
    return None


def classify(ip: IPAddress) -> str | None:
    """None if the address is a normal public unicast address; else the category name."""
    if isinstance(ip, IPv4Address):
        return _classify_v4(ip)
    return _classify_v6(ip)


# --- Numeric host spellings ---------------------------------------------------------

_RADIX_DIGITS = {
    8: frozenset("01234567"),
    10: frozenset(string.digits),
    16: frozenset(string.hexdigits),
}


def _parse_ipv4_number(part: str) -> int | None:
    """One dot-separated part in the WHATWG URL / inet_aton syntax: 0x hex, 0 octal, decimal."""
    if not part:
        return None
    if part[:2].lower() == "0x":
        digits, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        digits, radix = part[1:], 8
    else:
        digits, radix = part, 10
    if not digits:
        return 0  # a bare "0x" is zero for browsers
    # Checked by hand because int() also takes signs, underscores and non-ASCII digits.
    if not set(digits) <= _RADIX_DIGITS[radix]:
        return None
    try:
        return int(digits, radix)
    except ValueError:  # absurdly long decimal, beyond int()'s digit limit
        return None


def _parse_ipv4(text: str) -> IPv4Address | None:
    """An IPv4 address in any of the legacy shorthand forms: '127.1', '0x7f.1', '2130706433'."""
    parts = text.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # browsers ignore one trailing dot: 'http://127.0.0.1./'
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        number = _parse_ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    *leading, last = numbers
    # Each leading part is one octet; the last one fills all the remaining octets.
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return IPv4Address(value)


def _parse_ipv6(text: str) -> IPv6Address | None:
    # A zone in a URL is percent-encoded ('fe80::1%25eth0'); ipaddress wants it bare.
    try:
        return IPv6Address(text.replace("%25", "%", 1))
    except ValueError:
        return None


def parse_host_address(host: str) -> IPAddress | None:
    """The IP address a URL host denotes, if it is numeric in any form browsers/libc accept:
    dotted quad, '[::ffff:127.0.0.1]' brackets, a bare integer '2130706433', hex '0x7f.1',
    octal '0177.0.0.1', short forms '127.1', '10.1.2'. None for a real hostname."""
    if host.startswith("[") and host.endswith("]"):
        return _parse_ipv6(host[1:-1])
    if ":" in host:
        return _parse_ipv6(host)
    return _parse_ipv4(host)


def _parse_resolved(text: str) -> IPAddress | None:
    """A resolver's answer, which must already be a plain numeric address.

    Strict on purpose: anything else would be handed to the socket layer, which would
    look it up again behind the policy's back.
    """
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# --- The policy -----------------------------------------------------------------------


def _parse_network(cidr: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise ValueError(f"{_SETTING}: {cidr!r} is not a network: {exc}") from None


def address_text(ip: IPAddress) -> str:
    """The address as an operator expects to read it: '::ffff:127.0.0.1', not '::ffff:7f00:1'.

    Spelled out here because str() of a mapped address differs between Python releases.
    """
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


class AddressPolicy:
    """Refuses non-public addresses except those inside the operator's allowed networks.

    Immutable: a configuration reload builds a new policy and swaps it in.
    """

    def __init__(self, allow_networks: Sequence[str]) -> None:
        # A lone string is a Sequence[str] too, and "10.0.0.0/8" read character by
        # character would quietly allow 1.0.0.0/32 and 0.0.0.0/32.
        if isinstance(allow_networks, str):
            raise TypeError(f"{_SETTING} must be a list of networks, not one string")
        networks = tuple(_parse_network(cidr) for cidr in allow_networks)
        self.networks: tuple[IPNetwork, ...] = networks
        self._v4 = tuple(n for n in networks if isinstance(n, IPv4Network))
        self._v6 = tuple(n for n in networks if isinstance(n, IPv6Network))

    def __repr__(self) -> str:
        return f"AddressPolicy({[str(n) for n in self.networks]!r})"

    def _listed(self, ip: IPAddress) -> bool:
        if isinstance(ip, IPv4Address):
            return any(ip in network for network in self._v4)
        return any(ip in network for network in self._v6)

    def is_allowed(self, ip: IPAddress) -> bool:
        """True if a connection to ip is permitted: it is public or an allowed network holds it."""
        if classify(ip) is None or self._listed(ip):
            return True
        if isinstance(ip, IPv6Address):
            embedded = embedded_ipv4(ip)
            if embedded is not None:
                # Allowing 127.0.0.0/8 also allows ::ffff:127.0.0.1: same destination.
                _, candidates = embedded
                return all(classify(v4) is None or self._listed(v4) for v4 in candidates)
        return False

    def check(self, host: str, ip: IPAddress) -> None:
        """Raise BlockedAddress unless a connection to ip (an address of host) is permitted."""
        if not self.is_allowed(ip):
            raise BlockedAddress(host, address_text(ip), classify(ip) or "refused")


# --- resolution --------------------------------------------------------------


def _literal_result(host: str, ip: IPAddress, port: int) -> ResolveResult:
    """The resolver answer for a numeric host: the canonical form of the checked address.

    Handing the socket layer '127.0.0.1' rather than '0x7f.1' means it connects to the
    address that was checked instead of interpreting the spelling again.
    """
    return ResolveResult(
        hostname=host,
        host=str(ip),
        port=port,
        family=socket.AF_INET if ip.version == 4 else socket.AF_INET6,
        proto=0,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )


def _filter_results(
    policy: AddressPolicy, host: str, results: Sequence[ResolveResult]
) -> list[ResolveResult]:
    """The answers the policy permits; BlockedAddress naming the first refusal if none."""
    passed: list[ResolveResult] = []
    first_refusal: BlockedAddress | None = None
    for result in results:
        ip = _parse_resolved(result["host"])
        if ip is None:
            refusal = BlockedAddress(host, result["host"], "not a numeric address")
        elif policy.is_allowed(ip):
            passed.append(result)
            continue
        else:
            refusal = BlockedAddress(host, address_text(ip), classify(ip) or "refused")
        first_refusal = first_refusal or refusal
    if not passed:
        if first_refusal is None:
            raise OSError(f"no addresses found for host {host!r}")
        raise first_refusal
    return passed


class GuardedResolver(AbstractResolver):
    """Resolves through an inner resolver and returns only the addresses the policy permits.

    The delivery client connects to exactly the returned list, so there is no second
    lookup that a rebinding name could answer differently. Numeric hosts in any spelling
    are answered here with the canonical address that was checked, never passed to the
    inner resolver or the socket layer as written. The inner resolver is aiohttp's
    threaded getaddrinfo by default. ``policy`` may be reassigned at any time
    (configuration reload); each lookup reads it once.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner
        # The default resolver needs a running loop, so it is made on first use.
        self._owns_inner = inner is None

    def _resolver(self) -> AbstractResolver:
        if self._inner is None:
            self._inner = aiohttp.ThreadedResolver()
        return self._inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        policy = self.policy
        literal = parse_host_address(host)
        if literal is not None:
            # libc would accept '0x7f.1' or '2130706433' as an address without any DNS;
            # answer for it here so the spelling cannot bypass the check.
            policy.check(host, literal)
            return [_literal_result(host, literal, port)]
        results = await self._resolver().resolve(host, port, family)
        return _filter_results(policy, host, results)

    async def close(self) -> None:
        if self._owns_inner and self._inner is not None:
            await self._inner.close()


def refused_address(host: str, allow_networks: Sequence[str]) -> str | None:
    """Why a URL whose host is an IP address (in any spelling the address guard reads)
    can never be reached under the address policy, or None: the 422 of endpoint and token
    URLs. A name is checked at connect time only: what it resolves to may change."""
    ip = parse_host_address(host)
    if ip is None or AddressPolicy(allow_networks).is_allowed(ip):
        return None
    return (
        f"the address {address_text(ip)} ({classify(ip)}) is refused by the address "
        f"policy; add its network to {_SETTING} to allow it"
    )
