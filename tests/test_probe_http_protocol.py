"""HTTP/1.1 as the http probe speaks it through aiohttp's client: framing, compression, interim
answers, redirect rules, cookies, partial writes, TLS errors, and a duration that is the
service's time only."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import os
import resource
import socket
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from conftest import server_context
from http_servers import raw_server, read_request, serve

from sla_exporter.probes import http
from sla_exporter.probes.base import ProbeResult, Reason, run_probe
from sla_exporter.probes.http import HTTPProbe
from tests.helpers import free_port as unused_port


async def check(config: dict[str, Any], timeout: float = 2.0) -> ProbeResult:
    return await run_probe(http.probe, HTTPProbe.model_validate(config), timeout)


def app_with(*routes: web.RouteDef) -> web.Application:
    app = web.Application()
    app.add_routes(list(routes))
    return app


async def raw_answer(answer: bytes, **config: Any) -> ProbeResult:
    """Probe a server that reads the request and writes `answer`, then closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    async with raw_server(handler) as server:
        return await check({"url": f"{server.url}/", **config})


async def test_a_gzip_compressed_body_is_checked_as_the_text_it_encodes() -> None:
    body = gzip.compress(b"welcome to Mailpro " * 100)
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    result = await raw_answer(answer, expect={"body_contains": "Mailpro"})
    assert result.success, result.message
    assert result.message.endswith("status 200, 1900 bytes")


async def test_a_chunked_body_is_put_back_together() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nwelcome\r\n4\r\n to \r\n"
    answer += b"7\r\nMailpro\r\n0\r\nX-Trailer: 1\r\n\r\n"
    result = await raw_answer(answer, expect={"body_regex": "^welcome to Mailpro$"})
    assert result.success, result.message


async def test_a_broken_chunk_size_is_a_protocol_failure() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nwelcome\r\n0\r\n\r\n"
    result = await raw_answer(answer)
    assert result.reason == Reason.PROTOCOL
    # aiohttp parses a response's head and body in one pass when they come in one packet, so
    # a broken chunk there is an invalid response (h11 called it a broken body, after the head).
    assert result.message == "invalid HTTP response: Invalid character in chunk size: b'zz'"


async def test_a_body_without_length_ends_with_the_connection() -> None:
    result = await raw_answer(b"HTTP/1.1 200 OK\r\n\r\nall good", expect={"body_contains": "good"})
    assert result.success, result.message
    assert result.message.endswith("status 200, 8 bytes")


async def test_an_interim_answer_is_skipped_for_the_real_one() -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
    answer += b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    result = await raw_answer(answer)
    assert result.success, result.message
    assert result.status_code == 200


async def test_a_303_after_a_post_is_followed_with_a_get_without_the_body() -> None:
    seen: list[tuple[str, bytes]] = []

    async def form(request: web.Request) -> web.Response:
        seen.append((request.method, await request.read()))
        raise web.HTTPSeeOther("/done")

    async def done(request: web.Request) -> web.Response:
        seen.append((request.method, await request.read()))
        return web.Response(text="thanks")

    async with serve(app_with(web.post("/form", form), web.get("/done", done))) as url:
        result = await check({"url": f"{url}/form", "method": "POST", "body": "a=1"})
    assert result.success, result.message
    assert seen == [("POST", b"a=1"), ("GET", b"")]


async def test_a_307_is_followed_with_the_same_method_and_body() -> None:
    seen: list[tuple[str, bytes]] = []

    async def old(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/new")

    async def new(request: web.Request) -> web.Response:
        seen.append((request.method, await request.read()))
        return web.Response(status=201)

    async with serve(app_with(web.post("/old", old), web.post("/new", new))) as url:
        result = await check({"url": f"{url}/old", "method": "POST", "body": "payload"})
    assert result.success, result.message
    assert seen == [("POST", b"payload")]


async def test_credentials_do_not_follow_a_redirect_to_another_origin() -> None:
    seen: dict[str, str | None] = {}

    async def elsewhere(request: web.Request) -> web.Response:
        seen["elsewhere"] = request.headers.get("Authorization")
        return web.Response(text="ok")

    async with serve(app_with(web.get("/", elsewhere))) as other:

        async def start(request: web.Request) -> web.Response:
            seen["start"] = request.headers.get("Authorization")
            raise web.HTTPFound(f"{other}/")

        async with serve(app_with(web.get("/", start))) as url:
            result = await check({"url": f"{url}/", "headers": {"Authorization": "Bearer t0k"}})
    assert result.success, result.message
    assert seen == {"start": "Bearer t0k", "elsewhere": None}


async def test_a_cookie_set_by_a_redirect_goes_with_the_next_request() -> None:
    async def start(request: web.Request) -> web.Response:
        response = web.HTTPFound("/home")
        response.set_cookie("session", "abc")
        raise response

    async def home(request: web.Request) -> web.Response:
        return web.Response(text=f"session={request.cookies.get('session')}")

    async with serve(app_with(web.get("/", start), web.get("/home", home))) as url:
        result = await check({"url": f"{url}/", "expect": {"body_contains": "session=abc"}})
    assert result.success, result.message


async def test_the_duration_is_the_services_time_from_connect_to_the_last_byte() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.Response(text="late")

    async with serve(app_with(web.get("/", slow))) as url:
        result = await check({"url": f"{url}/"})
    assert result.success, result.message
    assert 0.2 <= result.duration < 0.3
    # The phases cover the same span: the probe's own bookkeeping is in neither.
    assert abs(sum(result.phases.values()) - result.duration) < 1e-6


async def test_a_host_name_is_resolved_and_each_address_tried() -> None:
    # localhost may resolve to ::1 before 127.0.0.1; the server listens on 127.0.0.1 only.
    async with serve(app_with(web.get("/", ok))) as url:
        result = await check({"url": url.replace("127.0.0.1", "localhost") + "/"})
    assert result.success, result.message
    assert "dns" in result.phases


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_when_a_name_has_several_addresses_a_refusing_one_is_passed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serve(app_with(web.get("/", ok))) as url:
        port = int(url.rsplit(":", 1)[1])
        refusing = unused_port()
        addresses = [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", refusing)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def resolve(host: str, *args: Any, **kwargs: Any) -> list[Any]:
            if host != "sla-probe.test":  # uvloop's sock_connect asks the loop about IPs too
                return await real(host, *args, **kwargs)
            return addresses  # the resolver is the boundary: two addresses, the first refusing

        monkeypatch.setattr(loop, "getaddrinfo", resolve)
        result = await check({"url": f"http://sla-probe.test:{port}/"})
    assert result.success, result.message
    assert {"dns", "connect"} <= set(result.phases)


# --------------------------------------------------------------------------------------------
# The exporter's own faults


@contextlib.contextmanager
def no_file_descriptors_left() -> Iterator[None]:
    """Make this process's next socket() fail with EMFILE, for real: the soft file limit is
    lowered to the highest descriptor in use and the free numbers below it are filled. At most
    a few dozen sockets are opened; the limit is restored afterwards."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to find the descriptors in use")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    held: list[socket.socket] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        for _ in range(highest + 1):
            try:
                held.append(socket.socket())
            except OSError as err:
                assert err.errno == errno.EMFILE
                break
        yield
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_running_out_of_file_descriptors_is_the_exporters_fault_not_the_services() -> None:
    # A flood of connections to the web port once left the probes with "connect: Too many open
    # files", counted as the service down. It is reason "exporter": the month leaves it unknown.
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async with serve(app_with(web.get("/", ok))) as url:
        with no_file_descriptors_left():
            result = await check({"url": f"{url}/"})
        after = await check({"url": f"{url}/"})
    assert result.reason == Reason.EXPORTER
    assert result.message == "exporter fault during connect: Too many open files"
    assert after.success, after.message  # the same target, once descriptors are free again


# --------------------------------------------------------------------------------------------
# Writes the socket takes in parts, TLS that breaks after the handshake, compression bombs


async def test_a_body_larger_than_the_socket_buffers_arrives_whole_at_a_slow_reader() -> None:
    # 8 MiB cannot go in one send(): the transport writes what the socket takes and the rest as
    # the reader (a server pausing between reads) makes room.
    payload = "".join(f"{i:08d}" for i in range(1 << 20))
    received: list[bytes] = []

    async def slow(request: web.Request) -> web.Response:
        body = bytearray()
        while chunk := await request.content.read(256 << 10):
            body += chunk
            await asyncio.sleep(0.005)
        received.append(bytes(body))
        return web.Response(text="stored")

    async with serve(app_with(web.post("/", slow))) as url:
        result = await check({"url": f"{url}/", "method": "POST", "body": payload}, timeout=10)
    assert result.success, result.message
    assert received == [payload.encode()]


async def test_a_tls_record_that_does_not_decrypt_fails_with_tls(
    localhost_cert: trustme.LeafCert, ca_file: str
) -> None:
    # After the handshake the server writes plain bytes under its TLS session, as a broken
    # middlebox would: the client cannot read them as a TLS record.
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        os.write(writer.get_extra_info("socket").fileno(), b"HTTP/1.1 200 OK\r\n\r\nplain")
        await asyncio.sleep(2)

    server = await asyncio.start_server(garbage, "127.0.0.1", 0, ssl=server_context(localhost_cert))
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await check({"url": f"https://127.0.0.1:{port}/", "tls": {"ca_file": ca_file}})
    assert result.reason == Reason.TLS
    assert result.message.startswith("TLS failed: "), result.message
    assert result.tls_expiry is not None  # the handshake itself went through


async def test_a_decompression_bomb_costs_one_failed_probe_and_bounded_memory() -> None:
    # 256 MiB of zeros in 255 KiB of gzip: decoded only as far as the body limit, then dropped.
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
    tracemalloc.start()
    try:
        result = await raw_answer(answer + bomb, max_body_bytes=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.reason == Reason.BODY_TOO_LARGE
    assert result.message.endswith("body of at least 4097 bytes exceeds max_body_bytes")
    assert peak < 8 << 20, f"peak {peak >> 20} MiB while decoding"


async def test_a_gzip_body_that_does_not_decode_is_a_protocol_failure() -> None:
    body = b"\x1f\x8b\x08\x00" + b"not gzip at all" * 10
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
    result = await raw_answer(answer + body)
    assert result.reason == Reason.PROTOCOL
    assert "gzip" in result.message
