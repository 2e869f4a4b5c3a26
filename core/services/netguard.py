"""Where the service may send callbacks: no server-side request forgery through webhooks.

A `callback_url` is supplied by a client and fetched by the server, so without a guard
any client could make the server POST to its own loopback, the cluster's private
network or the cloud provider's metadata endpoint. The guard accepts only http(s) URLs
whose host resolves exclusively to public addresses.

DNS can answer differently at registration and at delivery (DNS rebinding), so the
address is checked again at delivery time and the connection goes to exactly the
address that was checked: `resolve_callback` returns the vetted addresses and the
webhook sender connects to one of them, sending the original name in the `Host`
header and, for https, as the TLS server name (so the certificate is still verified
against the name the client gave).

`WEBHOOK_ALLOW_PRIVATE=true` lifts the restriction on loopback and private ranges for
development and tests. Cloud metadata endpoints stay refused even then: no webhook
consumer lives there, and they hand out credentials.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import BackendUnavailable, InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "fd00:ec2::254",  # AWS over IPv6
        "169.254.170.2",  # AWS ECS task credentials
        "100.100.100.200",  # Alibaba Cloud
    )
)
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
RESOLVE_TIMEOUT = 5.0
MAX_CALLBACK_URL_LENGTH = 2048


class CallbackRejected(InvalidInput):
    """The callback URL is not one the service is allowed to call."""


class CallbackUnresolvable(BackendUnavailable):
    """The callback host has no address right now (worth retrying at delivery)."""


@dataclass(frozen=True)
class CallbackTarget:
    """A vetted callback: the URL's parts and the addresses that passed the guard."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or address literal, without brackets
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def default_port(self) -> bool:
        return self.port == (443 if self.scheme == "https" else 80)


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in NAT64_PREFIX:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def address_class(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address ("loopback", "private", ...), or None if it is."""
    if ip in METADATA_ADDRESSES:
        return "cloud-metadata"
    for inner in embedded_ipv4(ip):
        reason = address_class(inner)
        if reason is not None:
            return reason
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        # Shared address space (100.64/10), benchmarking and other special-purpose
        # ranges: not reachable on the public internet, so not a webhook consumer.
        return "reserved"
    return None


def refusal(ip: IPAddress, *, allow_private: bool) -> str | None:
    """The address class that makes `ip` unusable under this policy, or None."""
    reason = address_class(ip)
    if reason is None or (allow_private and reason != "cloud-metadata"):
        return None
    return reason


def callback_url_problem(url: str) -> str | None:
    """Why `url` can never be a callback (syntax only, no DNS), or None when it can be.

    Whitespace and control characters are refused rather than cleaned: `urlsplit` drops
    tabs and line breaks silently while the HTTP client refuses them, so a URL that
    carries one would pass here and fail at every delivery.
    """
    if len(url) > MAX_CALLBACK_URL_LENGTH:
        return f"callback_url is {len(url)} characters; at most {MAX_CALLBACK_URL_LENGTH}"
    for position, char in enumerate(url):
        if char.isspace() or ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            return (
                f"callback_url contains {char!r} at position {position}; whitespace and "
                "control characters are not allowed"
            )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number in range)
    except ValueError as exc:
        return f"callback_url is not a valid URL: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return "callback_url must be an http:// or https:// URL"
    if not (parts.hostname or "").rstrip("."):
        return "callback_url has no host"
    return None


def parse_callback_url(url: str) -> tuple[str, str, int]:
    """(scheme, ASCII host, port) of an http(s) URL; CallbackRejected otherwise."""
    problem = callback_url_problem(url)
    if problem is not None:
        raise CallbackRejected(problem)
    parts = urlsplit(url)
    port = parts.port
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise CallbackRejected(f"callback_url host {host!r} is not a valid host name") from None
    return scheme, host, port or (443 if scheme == "https" else 80)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        raise CallbackUnresolvable(f"callback host {host!r} cannot be resolved: {exc}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        # Scope ids ("fe80::1%eth0") are dropped: the address class is what matters.
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise CallbackUnresolvable(f"callback host {host!r} has no address")
    return addresses


async def resolve_callback(url: str, *, allow_private: bool) -> CallbackTarget:
    """Vet a callback URL: scheme, host name, and every address the host resolves to.

    Every address must pass, not just one: a resolver may hand out any of them, and an
    attacker controls the order. Raises CallbackRejected for a refused URL and
    CallbackUnresolvable when the name does not resolve.
    """
    scheme, host, port = parse_callback_url(url)
    if host in METADATA_HOSTS:
        raise CallbackRejected(
            f"callback_url host {host!r} is a cloud metadata endpoint; callbacks there are refused"
        )
    addresses = await _resolve(host, port)
    for ip in addresses:
        reason = refusal(ip, allow_private=allow_private)
        if reason is not None:
            hint = "" if reason == "cloud-metadata" else " (WEBHOOK_ALLOW_PRIVATE=true allows it)"
            raise CallbackRejected(
                f"callback_url host {host!r} resolves to {ip}, a {reason} address; "
                f"callbacks to non-public addresses are refused{hint}"
            )
    return CallbackTarget(url=url, scheme=scheme, host=host, port=port, addresses=tuple(addresses))


async def check_callback_url(url: str, *, allow_private: bool) -> None:
    """Registration-time check: a URL that cannot be resolved is refused as invalid too."""
    try:
        await resolve_callback(url, allow_private=allow_private)
    except CallbackUnresolvable as exc:
        raise CallbackRejected(exc.detail) from None
