"""The mail_domain probe kind: what receivers check of a sending domain, through a resolver.

MX present and each exchange resolvable; SPF present, valid, within its lookup limits and
authorising the sending hosts; a parseable DKIM key for each selector; DMARC present with an
accepted policy. Each check is one phase (its time is the resolver's answer time), each has its
outcome in the result (`sla_probe_check_success`), and every failed one is named with its reason.

Libraries: dnspython (asyncio resolver, any resolver address and port, DNSSEC's AD flag), pyspf
for SPF (the reference implementation of RFC 7208's check_host: macros, include and redirect,
the 10-lookup and 2-void-lookup limits; Debian's python3-spf) and dkimpy for DKIM key records
(the parser its own verifier uses). checkdmarc was considered: it keeps a process-wide DNS
cache (a monitor must see a record change at the next probe), does not evaluate whether a host
is authorised, and brings an HTTP stack with it.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import dkim
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import spf
from dkim.util import InvalidTagValueList, parse_tag_value
from pydantic import AfterValidator, Field, StrictInt

from ..values import Model, custom, show
from .base import Kind, ProbeFailed, Reason, Trace, bounded

# --------------------------------------------------------------------------------------------
# Config: the `mail_domain:` section of a service

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _domain(value: str) -> str:
    name = value.rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
        raise custom("domain", f"must be a domain name like example.com, got {show(value)}")
    return name.lower()


Domain = Annotated[str, AfterValidator(_domain)]


def _selector(value: str) -> str:
    if not all(_LABEL.match(p) for p in value.split(".")):
        raise custom("selector", f"must be a DKIM selector like s2026, got {show(value)}")
    return value


Selector = Annotated[str, AfterValidator(_selector)]


def _host_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise custom("ip_address", f"must be an IPv4 or IPv6 address, got {show(value)}") from None


IPAddress = Annotated[str, AfterValidator(_host_address)]
_NAMESERVER = re.compile(
    r"^\[(?P<v6>[^\]]+)\](?::(?P<port6>\d+))?$|^(?P<host>[^:\[\]]+)(?::(?P<port>\d+))?$"
)


def _nameserver(value: str) -> str:
    """`192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53`, `[2001:db8::53]:5353`, `dns:53`."""
    try:
        address, port = parse_nameserver(value)
    except ValueError:
        raise custom(
            "nameserver",
            "must be a resolver's address or host name with an optional port, like 192.0.2.53, "
            f"127.0.0.1:5353, [2001:db8::53]:53 or resolver:53, got {show(value)}",
        ) from None
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def parse_nameserver(value: str) -> tuple[str, int]:
    """The address (or host name) and port of a nameserver as the config writes it (port 53
    by default)."""
    try:  # a bare IPv6 address has colons of its own
        return str(ipaddress.IPv6Address(value)), 53
    except ValueError:
        pass
    match = _NAMESERVER.match(value)
    if match is None:
        raise ValueError(value)
    port = int(match["port6"] or match["port"] or 53)
    if not 1 <= port <= 65535:
        raise ValueError(value)
    if match["v6"] is not None:
        return str(ipaddress.IPv6Address(match["v6"])), port
    host = match["host"]
    try:
        return str(ipaddress.IPv4Address(host)), port
    except ValueError:
        if re.fullmatch(r"[0-9.]+", host) or not all(_LABEL.match(p) for p in host.split(".")):
            raise ValueError(value) from None
        return host.lower(), port


Nameserver = Annotated[str, AfterValidator(_nameserver)]
Policy = Literal["none", "quarantine", "reject"]


class SPFCheck(Model):
    """The SPF record: present, valid, within RFC 7208's lookup limits; `hosts` must pass."""

    hosts: list[IPAddress] = []


class DKIMCheck(Model):
    """A DKIM public key for each selector, parseable, at least `min_key_bits` (RSA)."""

    selectors: list[Selector] = Field(min_length=1)
    min_key_bits: StrictInt = Field(default=1024, ge=512, le=16384)


class DMARCCheck(Model):
    """The DMARC record at `_dmarc.<domain>`, with one of the accepted policies (`p=`)."""

    policy: list[Policy] = Field(default=["quarantine", "reject"], min_length=1)


class MailDomainProbe(Model):
    domain: Domain
    # The resolvers asked, in order; the system's (/etc/resolv.conf) when empty. A split-horizon
    # or test set-up points this at its own resolver.
    nameservers: list[Nameserver] = []
    spf: SPFCheck = SPFCheck()
    dkim: DKIMCheck | None = None
    dmarc: DMARCCheck = DMARCCheck()
    # "required": an answer the resolver did not mark DNSSEC-validated (AD) fails the probe.
    dnssec: Literal["report", "required"] = "report"


# --------------------------------------------------------------------------------------------
# The resolver

# An address no SPF record authorises (TEST-NET-1, RFC 5737): evaluating it walks the whole
# record, so every include and redirect is looked up and counted against the limits.
UNLISTED = "192.0.2.0"
DNS_TIMEOUT = 30.0  # per query; the probe's own deadline is normally much shorter


async def addresses(nameservers: list[str]) -> list[tuple[str, int]]:
    """The configured nameservers as (IP address, port); host names looked up now (with the
    system's resolver), so a container's `resolver:53` follows its address."""
    out = []
    loop = asyncio.get_running_loop()
    for nameserver in nameservers:
        host, port = parse_nameserver(nameserver)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError:
                raise ProbeFailed(Reason.DNS, f"cannot resolve nameserver {host}") from None
            # Every address, in the system's order: the resolver tries the next on failure.
            out += [(str(info[4][0]), port) for info in infos if (str(info[4][0]), port) not in out]
            continue
        out.append((host, port))
    return out


async def make_resolver(nameservers: list[str]) -> dns.asyncresolver.Resolver:
    """An uncached resolver for `nameservers` (or the system's), asking for DNSSEC (DO and AD
    set, so a validating resolver says whether it validated)."""
    resolver = dns.asyncresolver.Resolver(configure=not nameservers)
    _configure(resolver, await addresses(nameservers))
    return resolver


def _configure(resolver: dns.resolver.BaseResolver, nameservers: list[tuple[str, int]]) -> None:
    if nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*n) for n in nameservers]
    resolver.cache = None  # every probe asks again: a monitor must see a change at once
    resolver.lifetime = DNS_TIMEOUT
    resolver.flags = dns.flags.RD | dns.flags.AD
    resolver.use_edns(0, dns.flags.DO, 1232)


@dataclass
class Answers:
    """Every answer of one probe run: the DNSSEC status is that of all of them together."""

    resolver: dns.asyncresolver.Resolver
    authenticated: list[bool] = field(default_factory=list)

    async def records(self, name: str, rdtype: str) -> list[Any]:
        """The records of `name` (empty when it has none or does not exist)."""
        try:
            answer = await self.resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.resolver.NoNameservers as err:
            why = _why(err)
            raise ProbeFailed(Reason.DNS, f"no resolver answered {rdtype} {name}: {why}") from None
        except dns.exception.Timeout:
            raise ProbeFailed(Reason.DNS, f"the resolver did not answer {rdtype} {name}") from None
        except dns.exception.DNSException as err:
            detail = bounded(str(err), 100)
            raise ProbeFailed(Reason.DNS, f"{rdtype} {name}: {detail}") from None
        self.seen(answer.response)
        return list(answer.rrset) if answer.rrset is not None else []

    def seen(self, response: dns.message.Message) -> None:
        self.authenticated.append(bool(response.flags & dns.flags.AD))

    async def texts(self, name: str) -> list[str]:
        """The TXT records of `name`, each with its strings joined (RFC 7208 3.3)."""
        records = await self.records(name, "TXT")
        return [b"".join(r.strings).decode("utf-8", "replace") for r in records]


def _why(err: dns.resolver.NoNameservers) -> str:
    # "All nameservers failed to answer the query x. IN TXT: Server Do53:127.0.0.1@53 answered
    # SERVFAIL" -> the rcode, which is what the reader needs.
    found = re.findall(r"answered (\w+)", str(err))
    return found[-1] if found else "no answer"


# --------------------------------------------------------------------------------------------
# The checks


async def check_mx(answers: Answers, domain: str) -> str:
    records = await answers.records(domain, "MX")
    if not records:
        raise ProbeFailed(Reason.MX, "no MX record")
    if all(r.exchange == dns.name.root for r in records):  # RFC 7505: "0 ." accepts no mail
        raise ProbeFailed(Reason.MX, "null MX: the domain accepts no mail")
    exchanges = sorted({r.exchange.to_text(omit_final_dot=True) for r in records})
    missing = []
    for exchange in exchanges:
        addresses = await answers.records(exchange, "A") + await answers.records(exchange, "AAAA")
        if not addresses:
            missing.append(exchange)
    if missing:
        shown = bounded(", ".join(missing), 100)
        raise ProbeFailed(Reason.MX, f"MX host without an address: {shown}")
    count = len(exchanges)
    return f"mx ok ({count} host{'s' if count != 1 else ''})"


# pyspf looks names up through a module-level function. The probe's resolver reaches it through
# a context variable, which asyncio.to_thread hands to the thread pyspf runs in; elsewhere (other
# users of pyspf in the process) the library's own lookup is used.
_SPF_LOOKUPS: contextvars.ContextVar[_SyncLookups | None] = contextvars.ContextVar(
    "spf_lookups", default=None
)
_LIBRARY_LOOKUP: Callable[..., list[Any]] = spf.DNSLookup


@dataclass
class _SyncLookups:
    resolver: dns.resolver.Resolver
    authenticated: list[bool]

    def __call__(self, name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
        try:
            answer = self.resolver.resolve(name, qtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as err:
            raise spf.TempError(f"DNS {bounded(str(err), 100)}") from None
        self.authenticated.append(bool(answer.response.flags & dns.flags.AD))
        out: list[tuple[tuple[str, str], Any]] = []
        for rdata in answer.rrset or ():
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out


def _lookup(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> list[Any]:
    lookups = _SPF_LOOKUPS.get()
    if lookups is None:
        return _LIBRARY_LOOKUP(name, qtype, strict, timeout)
    return lookups(name, qtype)


spf.DNSLookup = _lookup


@dataclass(frozen=True)
class SPFOutcome:
    result: str  # pass, fail, softfail, neutral, none, permerror, temperror
    explanation: str
    lookups: int


def evaluate_spf(domain: str, address: str) -> SPFOutcome:
    """RFC 7208 check_host(address, domain, postmaster@domain), in the calling thread."""
    query = spf.query(i=address, s=f"postmaster@{domain}", h=domain, querytime=DNS_TIMEOUT)
    result, _code, explanation = query.check()
    explanation = str(explanation).removeprefix("SPF Permanent Error: ")
    return SPFOutcome(result, explanation, int(query.lookups))


async def check_spf(answers: Answers, config: MailDomainProbe) -> str:
    domain = config.domain
    sync = dns.resolver.Resolver(configure=not config.nameservers)
    _configure(sync, await addresses(config.nameservers))
    lookups = _SyncLookups(sync, answers.authenticated)

    async def evaluate(address: str) -> SPFOutcome:
        _SPF_LOOKUPS.set(lookups)  # in this task's context only, copied into the thread
        return await asyncio.to_thread(evaluate_spf, domain, address)

    walk = await asyncio.create_task(evaluate(UNLISTED))
    if walk.result == "none":
        raise ProbeFailed(Reason.SPF, "no SPF record")
    if walk.result in ("permerror", "temperror"):
        raise ProbeFailed(Reason.SPF, f"{walk.result}: {bounded(walk.explanation, 120)}")
    refused = []
    for host in config.spf.hosts:
        outcome = await asyncio.create_task(evaluate(host))
        if outcome.result != "pass":
            refused.append(f"{host} {outcome.result}")
    if refused:
        shown = bounded(", ".join(refused), 120)
        raise ProbeFailed(Reason.SPF, f"sending hosts not authorised: {shown}")
    hosts = len(config.spf.hosts)
    authorised = f", {hosts} host{'s' if hosts != 1 else ''} pass" if hosts else ""
    return f"spf ok ({walk.lookups} lookup{'s' if walk.lookups != 1 else ''}{authorised})"


async def check_dkim(answers: Answers, domain: str, selector: str, min_bits: int) -> str:
    name = f"{selector}._domainkey.{domain}"
    records = await answers.texts(name)
    if not records:
        raise ProbeFailed(Reason.DKIM, f"no key at {name}")
    if len(records) > 1:
        raise ProbeFailed(Reason.DKIM, f"{len(records)} TXT records at {name}, one expected")
    record = records[0].encode()
    try:
        tags = parse_tag_value(record)
    except InvalidTagValueList as err:
        detail = bounded(str(err), 80)
        raise ProbeFailed(Reason.DKIM, f"{selector}: not a key record: {detail}") from None
    if not tags.get(b"p", b"").strip():
        raise ProbeFailed(Reason.DKIM, f"{selector}: key revoked (empty p=)")
    try:
        _key, bits, ktag, _tlsrpt = dkim.evaluate_pk(name.encode(), record)
    except dkim.NaClNotFoundError:  # ed25519 without PyNaCl: a 32-byte key is all to check
        if len(_b64(tags[b"p"])) != 32:
            raise ProbeFailed(Reason.DKIM, f"{selector}: not an ed25519 public key") from None
        bits, ktag = 256, b"ed25519"
    except dkim.KeyFormatError as err:
        detail = bounded(str(err).split(" (")[0], 80)
        raise ProbeFailed(Reason.DKIM, f"{selector}: unusable key: {detail}") from None
    if ktag == b"rsa" and bits is not None and bits < min_bits:
        raise ProbeFailed(Reason.DKIM, f"{selector}: RSA key of {bits} bits, below {min_bits}")
    return f"{selector} {ktag.decode() if ktag else '?'} {bits}"


def _b64(text: bytes) -> bytes:
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except ValueError:
        return b""


async def check_dmarc(answers: Answers, domain: str, accepted: list[Policy]) -> str:
    name = f"_dmarc.{domain}"
    records = [t for t in await answers.texts(name) if re.match(r"v\s*=\s*DMARC1\s*(;|$)", t)]
    if not records:
        raise ProbeFailed(Reason.DMARC, f"no DMARC record at {name}")
    if len(records) > 1:  # RFC 7489 6.6.3: then no policy applies at all
        raise ProbeFailed(Reason.DMARC, f"{len(records)} DMARC records, so none applies")
    try:
        tags = parse_tag_value(records[0].encode())
    except InvalidTagValueList as err:
        raise ProbeFailed(Reason.DMARC, f"invalid record: {bounded(str(err), 80)}") from None
    policy = tags.get(b"p", b"").decode("ascii", "replace").strip().lower()
    if policy not in ("none", "quarantine", "reject"):
        shown = f"p={bounded(policy, 20)}" if policy else "no p= tag"
        raise ProbeFailed(Reason.DMARC, f"invalid record: {shown}")
    if policy not in accepted:
        raise ProbeFailed(Reason.DMARC, f"policy p={policy}, expected {' or '.join(accepted)}")
    return f"dmarc p={policy}"


async def probe(config: MailDomainProbe, trace: Trace) -> str:
    """Run every check of the domain, each its own phase; fail naming every failed one."""
    answers = Answers(await make_resolver(config.nameservers))
    checks: list[tuple[str, str, Any]] = [
        ("mx", "mx", check_mx(answers, config.domain)),
        ("spf", "spf", check_spf(answers, config)),
    ]
    if config.dkim is not None:
        for selector in config.dkim.selectors:
            coro = check_dkim(answers, config.domain, selector, config.dkim.min_key_bits)
            checks.append((f"dkim:{selector}", "dkim", coro))
    checks.append(("dmarc", "dmarc", check_dmarc(answers, config.domain, config.dmarc.policy)))
    done: list[str] = []
    failed: list[tuple[str, ProbeFailed]] = []
    try:
        for name, phase, check in checks:
            trace.enter(phase)
            try:
                done.append(await check)
                trace.checks[name] = True
            except ProbeFailed as failure:
                trace.checks[name] = False
                failed.append((name, failure))
    finally:
        for _, _, check in checks:
            check.close()  # those the deadline cut off never started
    trace.settle()
    if answers.authenticated:
        trace.dnssec = all(answers.authenticated)
    if config.dnssec == "required" and trace.dnssec is not True:
        trace.checks["dnssec"] = False
        failed.append(("dnssec", ProbeFailed(Reason.DNS, "answers not DNSSEC-validated (no AD)")))
    if failed:
        first = failed[0][1]
        message = "; ".join(f"{name}: {failure.message}" for name, failure in failed)
        raise ProbeFailed(first.reason, f"{config.domain}: {message}")
    return f"{config.domain}: {', '.join(done)}"


KIND = Kind("mail_domain", MailDomainProbe, probe)
