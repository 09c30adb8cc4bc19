"""An authoritative DNS server on loopback for the sender authentication tests (dnslib).

It serves zone-file text over UDP and TCP on one port and answers as an authoritative server
does: the records of a name, NODATA (NOERROR, no answer) for a name that has other records,
NXDOMAIN for a name it does not have. Switches set what a broken resolver does: answer
SERVFAIL, answer nothing at all, or mark answers DNSSEC-validated (AD) as a validating resolver
in front of a signed zone would. The probe talks to it as to any resolver (`nameservers`).
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dnslib import QTYPE, RCODE, RR, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from helpers import free_port


@dataclass
class Zone(BaseResolver):  # type: ignore[misc]  # dnslib is untyped
    """The records served, and how the server behaves; tests change both as it runs."""

    records: dict[tuple[DNSLabel, str], list[RR]] = field(default_factory=dict)
    mode: str = "answer"  # "answer", "servfail" or "hang"
    authenticated: bool = False  # set AD on answers
    queries: list[tuple[str, str]] = field(default_factory=list)  # (name, type) as asked
    released: threading.Event = field(default_factory=threading.Event)

    def load(self, text: str) -> None:
        records: dict[tuple[DNSLabel, str], list[RR]] = {}
        for rr in RR.fromZone(text):
            records.setdefault((rr.rname, QTYPE[rr.rtype]), []).append(rr)
        self.records = records

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        qname, qtype = request.q.qname, QTYPE[request.q.qtype]
        self.queries.append((str(qname).rstrip("."), qtype))
        if self.mode == "hang":
            self.released.wait(60)  # until the test ends; the client must give up first
        reply = request.reply()
        reply.header.aa = 1
        if self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        for rr in self.records.get((qname, qtype), []):
            reply.add_answer(rr)
        if not reply.rr and not any(name == qname for name, _ in self.records):
            reply.header.rcode = RCODE.NXDOMAIN
        reply.header.ad = 1 if self.authenticated and reply.header.rcode == RCODE.NOERROR else 0
        return reply


class _Quiet(DNSLogger):  # type: ignore[misc]  # dnslib is untyped
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data")


class _UDP(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True
    allow_reuse_address = True


class _TCP(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def dns_server(zone_text: str) -> Iterator[tuple[Zone, str]]:
    """A server for `zone_text` on 127.0.0.1 (UDP and TCP); yields it and `127.0.0.1:port`."""
    zone = Zone()
    zone.load(zone_text)
    for _attempt in range(5):
        port = free_port()
        try:
            udp = DNSServer(zone, "127.0.0.1", port, logger=_Quiet(), server=_UDP)
            tcp = DNSServer(zone, "127.0.0.1", port, tcp=True, logger=_Quiet(), server=_TCP)
            break
        except OSError:  # the UDP port was free, the TCP one not (or the other way round)
            continue
    else:
        raise AssertionError("no free port for the DNS server")
    udp.start_thread()
    tcp.start_thread()
    try:
        yield zone, f"127.0.0.1:{port}"
    finally:
        zone.released.set()
        for server in (udp, tcp):
            server.stop()
            server.server.server_close()
