"""The callback guard: which addresses a webhook may reach, and how it connects there."""

from __future__ import annotations

import ipaddress
import socket

import httpx
import pytest

from core.errors import InvalidInput
from core.services.netguard import (
    CallbackRejected,
    CallbackUnresolvable,
    address_class,
    check_callback_url,
    parse_callback_url,
    refusal,
    resolve_callback,
)
from core.services.webhooks import PinnedSender, host_header, pinned_url


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "reserved"),  # carrier-grade NAT, not the public internet
        ("198.18.0.1", "private"),
        ("169.254.169.254", "cloud-metadata"),
        ("fd00:ec2::254", "cloud-metadata"),
        ("100.100.100.200", "cloud-metadata"),
        # IPv4 hidden inside IPv6 is judged by the IPv4 address
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud-metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        # public
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classes(address: str, expected: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected


def test_allow_private_lifts_everything_but_metadata() -> None:
    for address in ("127.0.0.1", "10.0.0.1", "fe80::1", "::1", "0.0.0.0"):
        ip = ipaddress.ip_address(address)
        assert refusal(ip, allow_private=False) is not None
        assert refusal(ip, allow_private=True) is None
    metadata = ipaddress.ip_address("169.254.169.254")
    assert refusal(metadata, allow_private=True) == "cloud-metadata"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "example.com/hook",
        "http://",
        "http://example.com:99999/",
    ],
)
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(CallbackRejected):
        parse_callback_url(url)


def test_parse_gives_ascii_host_and_default_ports() -> None:
    assert parse_callback_url("https://Example.COM/x") == ("https", "example.com", 443)
    assert parse_callback_url("http://example.com:8080/x") == ("http", "example.com", 8080)
    assert parse_callback_url("http://bücher.example/") == ("http", "xn--bcher-kva.example", 80)
    assert parse_callback_url("http://[2606:4700::1]:81/") == ("http", "2606:4700::1", 81)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://2130706433/",  # 127.0.0.1 written as one number
        "http://[::ffff:7f00:1]/",
    ],
)
async def test_internal_targets_are_refused(url: str) -> None:
    with pytest.raises(CallbackRejected) as refused:
        await check_callback_url(url, allow_private=False)
    assert isinstance(refused.value, InvalidInput)  # the API answers 400
    assert "refused" in refused.value.detail


async def test_metadata_stays_refused_when_private_is_allowed() -> None:
    for url in ("http://169.254.169.254/", "http://metadata.google.internal/"):
        with pytest.raises(CallbackRejected):
            await check_callback_url(url, allow_private=True)
    await check_callback_url("http://127.0.0.1:9/hook", allow_private=True)


async def test_public_literal_is_accepted_without_dns() -> None:
    target = await resolve_callback("https://8.8.8.8/hook", allow_private=False)
    assert target.addresses == (ipaddress.ip_address("8.8.8.8"),)


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (ip, port),
            )
            for ip in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


async def test_every_resolved_address_must_be_public(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(CallbackRejected, match=r"10\.0\.0\.7"):
        await resolve_callback("https://hooks.example.com/x", allow_private=False)


async def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {})
    with pytest.raises(CallbackUnresolvable):
        await resolve_callback("https://nowhere.example/x", allow_private=False)
    with pytest.raises(CallbackRejected, match="cannot be resolved"):
        await check_callback_url("https://nowhere.example/x", allow_private=False)


async def test_rebinding_is_caught_at_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.216.34"]})
    await check_callback_url("https://hooks.example.com/x", allow_private=False)
    fake_dns(monkeypatch, {"hooks.example.com": ["127.0.0.1"]})
    with pytest.raises(CallbackRejected, match="loopback"):
        await resolve_callback("https://hooks.example.com/x", allow_private=False)


async def test_pinned_url_and_host_header(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.216.34"], "v6.example.com": ["2606::1"]})
    plain = await resolve_callback("http://hooks.example.com/a?b=1", allow_private=False)
    assert str(pinned_url(plain)) == "http://93.184.216.34/a?b=1"
    assert host_header(plain) == "hooks.example.com"
    tls = await resolve_callback("https://v6.example.com:8443/a", allow_private=False)
    assert str(pinned_url(tls)) == "https://[2606::1]:8443/a"
    assert host_header(tls) == "v6.example.com:8443"


async def test_sender_connects_to_the_vetted_address(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.216.34"]})
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    sender = PinnedSender(allow_private=False, timeout=5, transport=httpx.MockTransport(answer))
    try:
        response = await sender.post("https://hooks.example.com/cb", b"{}", {"X-Test": "1"})
    finally:
        await sender.close()
    assert response.status_code == 204
    (request,) = seen
    assert request.url.host == "93.184.216.34"
    assert request.url.scheme == "https"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.headers["x-test"] == "1"
