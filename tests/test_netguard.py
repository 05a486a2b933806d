"""The outbound address policy: the range table, numeric host spellings, and real
connections through the delivery client against a loopback server.

Addresses outside loopback appear here only as values to classify or as fake resolver
answers; nothing in this file ever connects to them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import pickle
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from webhookd import http1
from webhookd.netguard import (
    AddressPolicy,
    BlockedAddress,
    GuardedResolver,
    classify,
    parse_host_address,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


# --- classify -------------------------------------------------------------------------

REFUSED: list[tuple[str, str]] = [
    # IPv4 "this network" / unspecified 0.0.0.0/8
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("0.255.255.255", "unspecified"),
    # RFC 1918
    ("10.0.0.0", "private"),
    ("10.20.30.40", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.0", "private"),
    ("172.20.1.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.0.0", "private"),
    ("192.168.1.1", "private"),
    ("192.168.255.255", "private"),
    # CGNAT
    ("100.64.0.0", "cgnat"),
    ("100.100.100.100", "cgnat"),
    ("100.127.255.255", "cgnat"),
    # loopback
    ("127.0.0.0", "loopback"),
    ("127.0.0.1", "loopback"),
    ("127.1.2.3", "loopback"),
    ("127.255.255.255", "loopback"),
    # link-local, including the cloud metadata address
    ("169.254.0.0", "link-local"),
    ("169.254.169.254", "link-local"),
    ("169.254.255.255", "link-local"),
    # IETF protocol assignments
    ("192.0.0.0", "ietf-protocol"),
    ("192.0.0.170", "ietf-protocol"),
    ("192.0.0.255", "ietf-protocol"),
    # documentation
    ("192.0.2.0", "documentation"),
    ("192.0.2.123", "documentation"),
    ("192.0.2.255", "documentation"),
    ("198.51.100.0", "documentation"),
    ("198.51.100.7", "documentation"),
    ("198.51.100.255", "documentation"),
    ("203.0.113.0", "documentation"),
    ("203.0.113.99", "documentation"),
    ("203.0.113.255", "documentation"),
    # deprecated 6to4 relay anycast
    ("192.88.99.0", "6to4-relay"),
    ("192.88.99.1", "6to4-relay"),
    ("192.88.99.255", "6to4-relay"),
    # benchmarking
    ("198.18.0.0", "benchmarking"),
    ("198.18.200.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    # multicast
    ("224.0.0.0", "multicast"),
    ("224.0.0.251", "multicast"),
    ("239.255.255.255", "multicast"),
    # reserved and broadcast
    ("240.0.0.0", "reserved"),
    ("250.1.2.3", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    # IPv6 unspecified and loopback
    ("::", "unspecified"),
    ("::1", "loopback"),
    # discard-only
    ("100::", "discard"),
    ("100::1:2", "discard"),
    ("100::ffff:ffff:ffff:ffff", "discard"),
    # Teredo
    ("2001::", "teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
    ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", "teredo"),
    # benchmarking
    ("2001:2::", "benchmarking"),
    ("2001:2::1", "benchmarking"),
    ("2001:2:0:ffff:ffff:ffff:ffff:ffff", "benchmarking"),
    # ORCHID and ORCHIDv2
    ("2001:10::", "orchid"),
    ("2001:10::1", "orchid"),
    ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", "orchid"),
    ("2001:20::", "orchid"),
    ("2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", "orchid"),
    # documentation
    ("2001:db8::", "documentation"),
    ("2001:db8:85a3::8a2e:370:7334", "documentation"),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "documentation"),
    ("3fff::", "documentation"),
    ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "documentation"),
    # SRv6 SIDs and other space outside 2000::/3
    ("5f00::1", "reserved"),
    ("4000::1", "reserved"),
    ("e000::", "reserved"),
    ("1::", "reserved"),
    # unique-local
    ("fc00::", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "unique-local"),
    # link-local
    ("fe80::", "link-local"),
    ("fe80::1", "link-local"),
    ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "link-local"),
    # site-local
    ("fec0::", "site-local"),
    ("fec0::1", "site-local"),
    ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "site-local"),
    # multicast
    ("ff00::", "multicast"),
    ("ff02::1", "multicast"),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "multicast"),
    # IPv4-mapped: classified by the IPv4 inside
    ("::ffff:0.0.0.0", "ipv4-mapped unspecified"),
    ("::ffff:127.0.0.1", "ipv4-mapped loopback"),
    ("::ffff:10.0.0.1", "ipv4-mapped private"),
    ("::ffff:169.254.169.254", "ipv4-mapped link-local"),
    ("::ffff:255.255.255.255", "ipv4-mapped broadcast"),
    # IPv4-translated (SIIT)
    ("::ffff:0:127.0.0.1", "ipv4-translated loopback"),
    # IPv4-compatible (deprecated)
    ("::0.0.0.2", "ipv4-compatible unspecified"),
    ("::127.0.0.1", "ipv4-compatible loopback"),
    ("::192.168.1.1", "ipv4-compatible private"),
    # 6to4: IPv4 in bits 16-48
    ("2002::", "6to4 unspecified"),
    ("2002:7f00:1::", "6to4 loopback"),
    ("2002:a00:1:1234::1", "6to4 private"),
    ("2002:a9fe:a9fe::", "6to4 link-local"),
    ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "6to4 broadcast"),
    # NAT64 well-known prefix
    ("64:ff9b::", "nat64 unspecified"),
    ("64:ff9b::127.0.0.1", "nat64 loopback"),
    ("64:ff9b::10.1.2.3", "nat64 private"),
    ("64:ff9b::100.64.0.1", "nat64 cgnat"),
    ("64:ff9b::ffff:ffff", "nat64 broadcast"),
    # NAT64 local-use: /48 layout puts 127.0.0.1 in bits 48-63 and 72-87
    ("64:ff9b:1:7f00:0:100::", "nat64 loopback"),
    ("64:ff9b:1::", "nat64 unspecified"),
    ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "nat64 broadcast"),
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "9.9.9.9",
    "93.184.215.14",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",  # just below 172.16/12
    "172.32.0.0",  # just above
    "192.0.1.255",
    "192.0.3.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",  # last before multicast
    "1.0.0.0",  # first after 0/8
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001::1",
    "2001:1::1",  # next to Teredo, not in it
    "2001:db9::1",  # next to documentation
    "::ffff:8.8.8.8",  # mapped form of a public address
    "2002:808:808::1",  # 6to4 of a public address
    "64:ff9b::1.1.1.1",  # NAT64 of a public address
]


@pytest.mark.parametrize(("address", "category"), REFUSED)
def test_classify_refused_ranges(address: str, category: str) -> None:
    assert classify(ip(address)) == category


@pytest.mark.parametrize("address", PUBLIC)
def test_classify_public_addresses_pass(address: str) -> None:
    assert classify(ip(address)) is None
    AddressPolicy([]).check("example.com", ip(address))


@pytest.mark.parametrize(("address", "category"), REFUSED)
def test_empty_policy_refuses_every_range(address: str, category: str) -> None:
    with pytest.raises(BlockedAddress) as info:
        AddressPolicy([]).check("h.example", ip(address))
    assert info.value.category == category
    assert ip(info.value.address) == ip(address)
    assert info.value.host == "h.example"


def test_mapped_addresses_are_reported_in_dotted_form() -> None:
    with pytest.raises(BlockedAddress) as info:
        AddressPolicy([]).check("h", ip("::ffff:7f00:1"))
    assert info.value.address == "::ffff:127.0.0.1"


def test_scoped_link_local_is_still_link_local() -> None:
    assert classify(ipaddress.IPv6Address("fe80::1%eth0")) == "link-local"


# --- BlockedAddress -------------------------------------------------------------------


def test_blocked_address_message_names_the_setting() -> None:
    exc = BlockedAddress("localhost", "127.0.0.1", "loopback")
    assert str(exc) == (
        "refused to connect to 127.0.0.1 (loopback) for host 'localhost': "
        "add a network containing it to security.allow_networks to allow it"
    )
    assert isinstance(exc, OSError)
    assert exc.errno is None


def test_blocked_address_survives_pickling() -> None:
    # Round-trips bytes this test made itself.
    exc = pickle.loads(pickle.dumps(BlockedAddress("h", "10.0.0.1", "private")))  # noqa: S301
    assert (exc.host, exc.address, exc.category) == ("h", "10.0.0.1", "private")


# --- parse_host_address ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.2", "10.1.0.2"),
        ("127.0.0.1.", "127.0.0.1"),  # one trailing dot, as browsers accept
        ("1.0x10000", "1.1.0.0"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[fe80::1%25eth0]", "fe80::1%eth0"),
        ("example.com", None),
        ("localhost", None),
        ("1.2.3.4.5", None),
        ("256.0.0.1", None),
        ("1.2.3.256", None),
        ("4294967296", None),
        ("0x7g.1", None),
        ("08.0.0.1", None),  # 8 is not an octal digit
        ("1..2", None),
        ("", None),
        ("+1.2.3.4", None),
        ("1_0.0.0.1", None),
        ("١٢٧.0.0.1", None),  # non-ASCII digits
        ("[example.com]", None),
        ("dead:beef", None),
        ("1" * 5000, None),
    ],
)
def test_parse_host_address(host: str, expected: str | None) -> None:
    parsed = parse_host_address(host)
    assert (None if parsed is None else str(parsed)) == expected


def _spell(value: int, parts: int, radixes: Sequence[int]) -> str:
    """value written in `parts` dot-separated numbers, each in the given radix."""
    numbers = [(value >> (8 * (3 - i))) & 0xFF for i in range(parts - 1)]
    numbers.append(value & ((1 << (8 * (5 - parts))) - 1))
    out = []
    for number, radix in zip(numbers, radixes, strict=False):
        if radix == 16:
            out.append(hex(number))
        elif radix == 8:
            out.append("0" + format(number, "o"))
        else:
            out.append(str(number))
    return ".".join(out)


@given(
    value=st.integers(0, 2**32 - 1),
    parts=st.integers(1, 4),
    radixes=st.lists(st.sampled_from([8, 10, 16]), min_size=4, max_size=4),
)
def test_parse_host_address_agrees_with_libc(value: int, parts: int, radixes: list[int]) -> None:
    spelled = _spell(value, parts, radixes)
    parsed = parse_host_address(spelled)
    assert parsed == ipaddress.IPv4Address(value)
    # The C library's own parser, the one a socket call would use on this host.
    assert socket.inet_aton(spelled) == parsed.packed


# --- properties of the policy ---------------------------------------------------------

# Chosen independently of the module's table: a sample of what must never pass.
REFUSED_V4_NETWORKS = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
]

refused_v4 = st.sampled_from(REFUSED_V4_NETWORKS).flatmap(lambda net: st.ip_addresses(network=net))


@given(st.ip_addresses(network="127.0.0.0/8") | st.ip_addresses(network="10.0.0.0/8"))
def test_loopback_and_private_v4_always_refused(address: IPAddress) -> None:
    assert classify(address) in {"loopback", "private"}
    with pytest.raises(BlockedAddress):
        AddressPolicy([]).check("h", address)


@given(refused_v4)
def test_ipv4_mapped_form_of_refused_address_is_refused(address: IPAddress) -> None:
    inner = classify(address)
    assert inner is not None
    mapped = ipaddress.IPv6Address(0xFFFF_0000_0000 | int(address))
    with pytest.raises(BlockedAddress) as info:
        AddressPolicy([]).check("h", mapped)
    assert info.value.category == f"ipv4-mapped {inner}"
    for embedded in (
        ipaddress.IPv6Address((0x2002 << 112) | (int(address) << 80)),  # 6to4
        ipaddress.IPv6Address((0x64_FF9B << 96) | int(address)),  # NAT64
    ):
        assert not AddressPolicy([]).is_allowed(embedded)


@given(
    address=st.ip_addresses(),
    prefix=st.integers(0, 128),
)
def test_allow_networks_containing_the_address_allows_it(address: IPAddress, prefix: int) -> None:
    network = ipaddress.ip_network(f"{address}/{min(prefix, address.max_prefixlen)}", strict=False)
    policy = AddressPolicy(["192.0.2.0/24", str(network)])
    assert policy.is_allowed(address)
    policy.check("h", address)


@given(refused_v4)
def test_allowing_an_ipv4_network_also_allows_its_mapped_form(address: IPAddress) -> None:
    policy = AddressPolicy([f"{address}/32"])
    mapped = ipaddress.IPv6Address(0xFFFF_0000_0000 | int(address))
    policy.check("h", mapped)
    assert policy.is_allowed(mapped)


def test_allowing_an_unrelated_network_does_not_allow_others() -> None:
    policy = AddressPolicy(["10.1.0.0/16", "fd00::/8"])
    assert policy.is_allowed(ip("10.1.2.3"))
    assert policy.is_allowed(ip("::ffff:10.1.2.3"))
    assert policy.is_allowed(ip("fd00::1"))
    assert not policy.is_allowed(ip("10.2.0.1"))
    assert not policy.is_allowed(ip("::ffff:10.2.0.1"))
    assert not policy.is_allowed(ip("127.0.0.1"))
    assert not policy.is_allowed(ip("fc00::1"))


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-a-network", "::1/200", ""])
def test_policy_rejects_bad_networks(bad: str) -> None:
    with pytest.raises(ValueError, match=r"security\.allow_networks"):
        AddressPolicy([bad])


def test_policy_rejects_a_lone_string() -> None:
    with pytest.raises(TypeError):
        AddressPolicy("10.0.0.0/8")


# --- the resolver, with a stub answering for a name -----------------------------------


@dataclass
class FixedResolver(AbstractResolver):
    """Answers every lookup with the same addresses; records what was asked."""

    addresses: list[str]
    asked: list[str] = field(default_factory=list)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


MIXED = ["10.0.0.1", "203.0.114.9", "127.0.0.1", "::1", "2606:4700::1111", "169.254.169.254"]


async def test_resolver_returns_only_passing_addresses() -> None:
    resolver = GuardedResolver(AddressPolicy([]), FixedResolver(MIXED))
    results = await resolver.resolve("mixed.example", 443)
    assert [r["host"] for r in results] == ["203.0.114.9", "2606:4700::1111"]
    assert all(r["port"] == 443 and r["hostname"] == "mixed.example" for r in results)


async def test_resolver_policy_is_swappable() -> None:
    resolver = GuardedResolver(AddressPolicy([]), FixedResolver(MIXED))
    resolver.policy = AddressPolicy(["10.0.0.0/8"])
    results = await resolver.resolve("mixed.example", 443)
    assert [r["host"] for r in results] == ["10.0.0.1", "203.0.114.9", "2606:4700::1111"]


async def test_resolver_raises_first_refusal_when_nothing_passes() -> None:
    resolver = GuardedResolver(
        AddressPolicy([]), FixedResolver(["169.254.169.254", "127.0.0.1", "fd00::1"])
    )
    with pytest.raises(BlockedAddress) as info:
        await resolver.resolve("metadata.example", 80)
    assert (info.value.host, info.value.address, info.value.category) == (
        "metadata.example",
        "169.254.169.254",
        "link-local",
    )


async def test_resolver_refuses_a_non_numeric_answer() -> None:
    # The socket layer would look such an answer up again, unchecked.
    resolver = GuardedResolver(AddressPolicy([]), FixedResolver(["internal.example"]))
    with pytest.raises(BlockedAddress) as info:
        await resolver.resolve("rebind.example", 80)
    assert info.value.category == "not a numeric address"


@pytest.mark.parametrize("host", ["0x7f.1", "2130706433", "127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_resolver_answers_numeric_hosts_itself(host: str) -> None:
    inner = FixedResolver(["203.0.114.9"])
    resolver = GuardedResolver(AddressPolicy([]), inner)
    with pytest.raises(BlockedAddress) as info:
        await resolver.resolve(host, 80)
    assert "loopback" in info.value.category
    assert inner.asked == []

    resolver.policy = AddressPolicy(["127.0.0.0/8"])
    [result] = await resolver.resolve(host, 80)
    assert ipaddress.ip_address(result["host"]) in {ip("127.0.0.1"), ip("::ffff:127.0.0.1")}


# --- real connections to a loopback server --------------------------------------------


@dataclass
class LoopbackServer:
    port: int
    hits: list[str]
    peers: set[str] = field(default_factory=set)
    keep_alive: bool = False

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}/"


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    state = LoopbackServer(0, [])

    async def handle(request: web.Request) -> web.Response:
        state.hits.append(request.host)
        state.peers.add(str(request.transport.get_extra_info("peername")))
        response = web.Response(text="ok")
        if not state.keep_alive:
            # One connection per request, so every request goes through connect again.
            response.force_close()
        return response

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


async def mapped_loopback_works(port: int) -> bool:
    """Whether this host routes ::ffff:127.0.0.1 to the IPv4 loopback listener."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("::ffff:127.0.0.1", port), timeout=5
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "2130706433", "0x7f.1", "127.1", "[::ffff:127.0.0.1]"]


async def post(client: http1.Client, url: str) -> str:
    head = http1.header_block({"Host": http1.target(url).host_header, "Content-Length": "0"})
    answer = await client.post(url, head, b"", timeout_s=10, keep=100, discard=1 << 20)
    assert answer.status == 200
    return answer.body.decode()


def guarded(allow: list[str], inner: AbstractResolver | None = None) -> http1.Client:
    return http1.Client(GuardedResolver(AddressPolicy(allow), inner))


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_client_refuses_loopback(server: LoopbackServer, host: str) -> None:
    client = guarded([])
    try:
        with pytest.raises(http1.Failure) as info:
            await post(client, server.url(host))
    finally:
        await client.close()
    assert info.value.kind == "blocked_address"
    assert "loopback" in info.value.message
    assert repr(URL(server.url(host)).raw_host) in info.value.message
    assert "security.allow_networks" in info.value.message
    assert server.hits == []


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_allowed_network_reaches_loopback(server: LoopbackServer, host: str) -> None:
    if "::ffff:" in host and not await mapped_loopback_works(server.port):
        pytest.skip("this host does not route IPv4-mapped addresses to IPv4 listeners")
    client = guarded(["127.0.0.0/8"])
    try:
        assert await post(client, server.url(host)) == "ok"
    finally:
        await client.close()
    assert len(server.hits) == 1


async def test_narrowed_policy_drops_kept_alive_connections(server: LoopbackServer) -> None:
    server.keep_alive = True
    client = guarded(["127.0.0.0/8"])
    try:
        assert await post(client, server.url("localhost")) == "ok"
        assert await post(client, server.url("localhost")) == "ok"
        assert len(server.peers) == 1  # the second request reused the connection
        client.policy = AddressPolicy([])
        for host in ("localhost", "127.0.0.1"):
            with pytest.raises(http1.Failure) as info:
                await post(client, server.url(host))
            assert info.value.kind == "blocked_address"
    finally:
        await client.close()
    assert len(server.hits) == 2


async def test_mixed_answers_connect_only_to_passing_address(server: LoopbackServer) -> None:
    # 127.0.0.2 would be refused and is listed first; the connection must go to .1.
    inner = FixedResolver(["127.0.0.2", "::1", "127.0.0.1"])
    client = guarded(["127.0.0.1/32"], inner)
    try:
        assert await post(client, server.url("service.test")) == "ok"
    finally:
        await client.close()
    assert inner.asked == ["service.test"]
    assert server.hits == [f"service.test:{server.port}"]
