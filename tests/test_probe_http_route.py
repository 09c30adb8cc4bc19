"""How the http probe reaches a server and what it asks of its answer: a proxy (configured or
from the environment), the IP family to prefer or require, and the response's compression."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import brotli
import pytest
import trustme
from aiohttp import web
from conftest import server_context
from http_servers import forward_proxy, serve
from pydantic import SecretStr

from sla_exporter.config import parse
from sla_exporter.loader import ConfigInvalid
from sla_exporter.probes import http
from sla_exporter.probes.base import ProbeResult, Reason, run_probe
from sla_exporter.probes.http import HTTPProbe
from tests.helpers import free_port


async def check(config: dict[str, Any], timeout: float = 2.0) -> ProbeResult:
    return await run_probe(http.probe, HTTPProbe.model_validate(config), timeout)


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello through")


def hello_app() -> web.Application:
    app = web.Application()
    app.add_routes([web.get("/", hello)])
    return app


# --------------------------------------------------------------------------------------------
# Proxies


async def test_a_plain_http_request_goes_through_the_configured_proxy() -> None:
    async with forward_proxy() as proxy, serve(hello_app()) as url:
        result = await check({"url": f"{url}/", "proxy_url": proxy.url})
    assert result.success, result.message
    assert proxy.requests == [f"GET {url}/ HTTP/1.1"]


async def test_an_https_request_tunnels_through_the_proxy_and_still_checks_the_certificate(
    localhost_cert: trustme.LeafCert, ca_file: str, self_signed_cert: trustme.LeafCert
) -> None:
    async with forward_proxy() as proxy:
        async with serve(hello_app(), ssl=server_context(localhost_cert)) as url:
            good = await check(
                {"url": f"{url}/", "proxy_url": proxy.url, "tls": {"ca_file": ca_file}}
            )
        async with serve(hello_app(), ssl=server_context(self_signed_cert)) as untrusted:
            bad = await check(
                {"url": f"{untrusted}/", "proxy_url": proxy.url, "tls": {"ca_file": ca_file}}
            )
    assert good.success, good.message
    assert good.tls_expiry is not None
    assert {"connect", "tls", "first_byte", "transfer"} <= set(good.phases)
    assert proxy.requests[0] == f"CONNECT {url.removeprefix('https://')} HTTP/1.1"
    assert bad.reason == Reason.TLS
    assert bad.message.startswith("certificate rejected")


async def test_proxy_credentials_come_from_a_secret_and_never_show_in_a_message(
    localhost_cert: trustme.LeafCert, ca_file: str
) -> None:
    async with forward_proxy("probe:pr0xy-s3cret") as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        async with serve(hello_app(), ssl=server_context(localhost_cert)) as url:
            config = {"url": f"{url}/", "tls": {"ca_file": ca_file}}
            good = await check(
                {**config, "proxy_url": SecretStr(f"http://probe:pr0xy-s3cret@127.0.0.1:{port}")}
            )
            refused = await check(
                {**config, "proxy_url": SecretStr(f"http://probe:wr0ng-s3cret@127.0.0.1:{port}")}
            )
    assert good.success, good.message
    assert refused.reason == Reason.AUTH
    assert refused.message == "the proxy refused to connect: status 407"
    assert "s3cret" not in repr(refused)


async def test_a_proxy_that_is_not_there_fails_with_connect_naming_the_proxy() -> None:
    async with serve(hello_app()) as url:
        result = await check({"url": f"{url}/", "proxy_url": f"http://127.0.0.1:{free_port()}"})
    assert result.reason == Reason.CONNECT
    assert result.message == "cannot reach the proxy: connection refused"


async def test_the_environment_proxy_is_used_when_asked_for_and_no_proxy_is_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with forward_proxy() as proxy, serve(hello_app()) as url:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        ignored = await check({"url": f"{url}/"})  # the environment only when asked for
        used = await check({"url": f"{url}/", "proxy_from_environment": True})
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        bypassed = await check({"url": f"{url}/", "proxy_from_environment": True})
    assert ignored.success and used.success and bypassed.success
    assert proxy.requests == [f"GET {url}/ HTTP/1.1"]


# --------------------------------------------------------------------------------------------
# IP family


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1) to listen on"
)


@asynccontextmanager
async def dual_stack(
    monkeypatch: pytest.MonkeyPatch, families: tuple[socket.AddressFamily, ...]
) -> AsyncIterator[str]:
    """A server on 127.0.0.1 and ::1 (same port) answering with the family it was reached over,
    and the name `dual.test` resolving to the addresses of `families`; yields its URL."""

    async def family(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return web.Response(text="ip6" if peer and ":" in peer[0] else "ip4")

    app = web.Application()
    app.add_routes([web.get("/", family)])
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    port = free_port()
    for host in ("127.0.0.1", "::1"):
        await web.TCPSite(runner, host, port).start()
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    answers = {
        socket.AF_INET: (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        socket.AF_INET6: (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
    }

    async def resolve(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host != "dual.test":
            return await real(host, *args, **kwargs)
        return [answers[f] for f in families]  # the resolver is the boundary

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    try:
        yield f"http://dual.test:{port}/"
    finally:
        await runner.cleanup()


@needs_ipv6
@pytest.mark.parametrize("preferred", ["ip4", "ip6"])
async def test_the_preferred_ip_protocol_is_the_one_connected_over(
    monkeypatch: pytest.MonkeyPatch, preferred: str
) -> None:
    both = (socket.AF_INET, socket.AF_INET6)
    async with dual_stack(monkeypatch, both) as url:
        result = await check(
            {"url": url, "preferred_ip_protocol": preferred, "expect": {"body_contains": preferred}}
        )
    assert result.success, result.message
    assert "dns" in result.phases


@needs_ipv6
async def test_without_fallback_a_name_without_the_preferred_family_fails_with_dns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with dual_stack(monkeypatch, (socket.AF_INET,)) as url:
        strict = await check(
            {"url": url, "preferred_ip_protocol": "ip6", "ip_protocol_fallback": False}
        )
        lenient = await check(
            {"url": url, "preferred_ip_protocol": "ip6", "expect": {"body_contains": "ip4"}}
        )
    assert strict.reason == Reason.DNS
    assert strict.message == (
        "cannot resolve dual.test: no IPv6 address (ip_protocol_fallback is false)"
    )
    assert lenient.success, lenient.message


@needs_ipv6
async def test_an_ipv6_literal_url_is_probed_over_ipv6() -> None:
    app = hello_app()
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "::1", port).start()
    try:
        result = await check({"url": f"http://[::1]:{port}/"})
    finally:
        await runner.cleanup()
    assert result.success, result.message
    assert "dns" not in result.phases


# --------------------------------------------------------------------------------------------
# Compression


def compressing_app(seen: list[str | None]) -> web.Application:
    """Answers gzip, deflate or br as the request's Accept-Encoding asks (aiohttp's own choice),
    or plain text; records the Accept-Encoding it got."""

    async def page(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        asked = request.headers.get("Accept-Encoding", "")
        text = "welcome to Mailpro " * 200
        if asked == "br":
            body = brotli.compress(text.encode())
            return web.Response(body=body, headers={"Content-Encoding": "br"})
        response = web.Response(text=text)
        if asked != "identity":
            response.enable_compression()
        return response

    app = web.Application()
    app.add_routes([web.get("/", page)])
    return app


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "identity"])
async def test_compression_asks_for_the_coding_and_checks_the_body_it_encodes(coding: str) -> None:
    seen: list[str | None] = []
    async with serve(compressing_app(seen)) as url:
        result = await check(
            {"url": f"{url}/", "compression": coding, "expect": {"body_contains": "Mailpro"}}
        )
    assert result.success, result.message
    assert result.message.endswith(f"{len('welcome to Mailpro ') * 200} bytes")
    assert seen == [coding]


async def test_a_response_not_encoded_as_required_fails_with_body_mismatch() -> None:
    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="never compressed")

    app = web.Application()
    app.add_routes([web.get("/", plain)])
    async with serve(app) as url:
        result = await check({"url": f"{url}/", "compression": "gzip"})
    assert result.reason == Reason.BODY_MISMATCH
    assert result.message == f"GET {url}/: body encoded identity, expected gzip (compression)"
    assert result.status_code == 200


async def test_without_compression_a_gzip_answer_is_decoded_as_before() -> None:
    body = gzip.compress(b"welcome to Mailpro")

    async def zipped(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.add_routes([web.get("/", zipped)])
    async with serve(app) as url:
        result = await check({"url": f"{url}/", "expect": {"body_contains": "Mailpro"}})
    assert result.success, result.message


# --------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"proxy_url": "socks5://127.0.0.1:1080"},
            'proxy_url: must be an http:// or https:// proxy URL with a host, got "socks5://',
        ),
        (
            {"proxy_url": "http://user:hunter2@proxy.example:3128"},
            "proxy_url: must not hold credentials (user:password@) in the file; put the whole "
            "URL in a secret with !env or !file",
        ),
        (
            {"proxy_url": "http://proxy.example:3128", "proxy_from_environment": True},
            "proxy_from_environment: cannot be used together with proxy_url",
        ),
        (
            {"ip_protocol_fallback": False},
            "ip_protocol_fallback: needs preferred_ip_protocol (ip4 or ip6)",
        ),
        ({"preferred_ip_protocol": "ipv6"}, 'preferred_ip_protocol: must be "ip4" or "ip6"'),
        (
            {"compression": "gzip", "headers": {"Accept-Encoding": "br, identity"}},
            'compression: needs an Accept-Encoding header that accepts "gzip", got "br, identity"',
        ),
    ],
)
def test_route_and_compression_settings_are_checked_when_the_file_loads(
    settings: dict[str, Any], message: str
) -> None:
    text = (
        "sla: {name: Route}\n"
        "services:\n"
        "  web:\n"
        "    http:\n"
        "      url: http://127.0.0.1:9/\n"
        + "".join(f"      {key}: {_yaml(value)}\n" for key, value in settings.items())
    )
    with pytest.raises(ConfigInvalid) as caught:
        parse(text, "sla.yml")
    shown = str(caught.value)
    assert message in shown
    assert "hunter2" not in shown


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return f'"{value}"'


def test_the_accept_encoding_check_reads_weights_and_wildcards() -> None:
    assert http._accepts("gzip, br", "gzip")
    assert http._accepts("br;q=1.0, gzip;q=0.9", "gzip")
    assert not http._accepts("br, gzip;q=0", "gzip")
    assert http._accepts("*", "deflate")
    assert not http._accepts("br", "deflate")
    assert http._accepts("br", "identity")
    assert not http._accepts("br, identity;q=0", "identity")
