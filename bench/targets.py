"""Loopback targets that are never the bottleneck: nginx, a 200 ms responder, an SMTP responder.

Each runs in its own process, so neither its CPU time nor its event loop is mixed up with the
exporters being measured:

  nginx          HTTP and HTTPS from Debian's nginx (two workers), a fixed small page.
  delay          answers every HTTP request exactly DELAY seconds after the request reached
                 its socket (the kernel's receive timestamp), from pre-forked processes that
                 sleep and then spin to the deadline, so no other work can make them late.
  smtp           a minimal SMTP responder: banner, EHLO, STARTTLS, NOOP, RSET, QUIT.

`python -m bench.targets delay --port P` and `... smtp --port P --cert C --key K` run the two
Python ones; `Targets` starts all of them for a benchmark run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

from .procs import Proc, free_port

DELAY = 0.200  # seconds the delay target waits between reading a request and answering

PAGE = "Mailpro bench page: ok\n"

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 16384; }}
worker_rlimit_nofile 40000;
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 0;
    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        listen 127.0.0.1:{https_port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        default_type text/plain;
        location / {{ return 200 "{page}"; }}
    }}
}}
"""


@dataclass(frozen=True)
class Addresses:
    """Where the targets listen, and the CA both exporters are told to trust."""

    http: str  # base URL, no trailing slash
    https: str
    delay: str
    smtp_port: int
    ca_file: str


class Targets:
    """Starts every target (and its TLS material, ECDSA P-256 from trustme) in `work`."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[Proc] = []

    def start(self) -> Addresses:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise RuntimeError("nginx is missing: run bench/run.sh, or apt-get install nginx")
        tls = self.work / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        ca.cert_pem.write_to_path(str(tls / "ca.pem"))
        leaf.private_key_pem.write_to_path(str(tls / "key.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(tls / "cert.pem"))
        http_port, https_port, delay_port, smtp_port = (free_port() for _ in range(4))
        conf = self.work / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                dir=self.work,
                http_port=http_port,
                https_port=https_port,
                cert=tls / "cert.pem",
                key=tls / "key.pem",
                page=PAGE.replace("\n", "\\n"),
            )
        )
        python = [sys.executable, "-m", "bench.targets"]
        tls_files = ["--cert", str(tls / "cert.pem"), "--key", str(tls / "key.pem")]
        nginx_argv = [nginx, "-p", str(self.work), "-c", str(conf), "-e", "stderr"]
        started = [
            (Proc("nginx", nginx_argv, self.work), http_port),
            (Proc("delay", [*python, "delay", "--port", str(delay_port)], self.work), delay_port),
            (
                Proc("smtp", [*python, "smtp", "--port", str(smtp_port), *tls_files], self.work),
                smtp_port,
            ),
        ]
        for proc, port in started:
            self.procs.append(proc)
            proc.wait_port(port)
        return Addresses(
            http=f"http://127.0.0.1:{http_port}",
            https=f"https://127.0.0.1:{https_port}",
            delay=f"http://127.0.0.1:{delay_port}",
            smtp_port=smtp_port,
            ca_file=str(tls / "ca.pem"),
        )

    def cpu(self) -> dict[str, float]:
        """CPU seconds each target has used so far (with their worker processes)."""
        return {p.name: p.cpu(with_children=p.name in ("nginx", "delay")) for p in self.procs}

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


# --------------------------------------------------------------------------------------------
# The 200 ms target

DELAY_WORKERS = 48  # answering at once; 20 probes in flight need 20, with room to spare
_SPIN = 0.0003  # the last 300 us before the deadline are spun, not slept: wake-ups come late
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not name it
_PR_SET_TIMERSLACK, _PR_SET_PDEATHSIG = 29, 1


def _prctl(option: int, value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _delay_worker(listener: socket.socket) -> None:
    """Answer one connection at a time, DELAY after its request reached the socket."""
    body = b"delayed ok\n"
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    while True:
        conn, _ = listener.accept()
        with conn:
            # The kernel stamps each packet as it arrives: the delay counts from there, not from
            # whenever this process got to run, so our own wake-up latency is not in it.
            conn.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            request, arrived = b"", None
            while b"\r\n\r\n" not in request:
                data, ancillary, _, _ = conn.recvmsg(65536, 64)
                if not data:
                    break
                for level, kind, value in ancillary:
                    if arrived is None and (level, kind) == (socket.SOL_SOCKET, _SO_TIMESTAMPNS):
                        seconds, nanoseconds = struct.unpack("qq", value[:16])
                        arrived = seconds + nanoseconds * 1e-9
                request += data
            # Arrival is on the realtime clock; wait on the monotonic one.
            deadline = (arrived or time.time()) - time.time() + time.perf_counter() + DELAY
            rest = deadline - time.perf_counter() - _SPIN
            if rest > 0:
                time.sleep(rest)
            while time.perf_counter() < deadline:
                pass
            with contextlib.suppress(OSError):
                conn.sendall(response)


def serve_delay(port: int) -> None:
    """Pre-forked workers blocked in accept(): no thread to start, no lock to wait for."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    _prctl(_PR_SET_TIMERSLACK, 1)  # 1 ns instead of 50 us of allowed lateness for sleeps
    children = []
    for _ in range(DELAY_WORKERS):
        pid = os.fork()
        if pid == 0:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # go when the parent goes
            with contextlib.suppress(KeyboardInterrupt):
                _delay_worker(listener)
            os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for _ in children:
            os.wait()
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# The SMTP responder

_EHLO_PLAIN = (
    b"250-bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n"
)
_EHLO_TLS = (
    b"250-bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-AUTH PLAIN\r\n250 SMTPUTF8\r\n"
)


async def _smtp_session(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
) -> None:
    tls = False
    writer.write(b"220 bench.test ESMTP ready\r\n")
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(_EHLO_TLS if tls else _EHLO_PLAIN)
            elif verb == b"STAR" and not tls:
                writer.write(b"220 2.0.0 ready to start TLS\r\n")
                await writer.drain()
                await writer.start_tls(context)
                tls = True
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                break
            elif verb in (b"NOOP", b"RSET"):
                writer.write(b"250 2.0.0 ok\r\n")
            else:
                writer.write(b"502 5.5.2 not implemented\r\n")
    writer.close()


async def serve_smtp(port: int, cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _smtp_session(reader, writer, context)

    server = await asyncio.start_server(session, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.targets")
    parser.add_argument("kind", choices=["delay", "smtp"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        if args.kind == "delay":
            serve_delay(args.port)
        else:
            asyncio.run(serve_smtp(args.port, args.cert, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
