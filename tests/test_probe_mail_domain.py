"""The mail_domain probe against a real authoritative DNS server on loopback (dns_servers.py),
serving a test zone with one domain per broken record beside a good one."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dns_servers import Zone, dns_server

from sla_exporter.probes import mail_domain
from sla_exporter.probes.base import ProbeResult, Reason, run_probe
from sla_exporter.probes.mail_domain import MailDomainProbe

SENDER = "127.0.0.10"  # authorised directly (ip4:)
RELAY = "127.0.0.11"  # authorised through an include
STRANGER = "127.0.0.99"  # authorised by nobody


def dkim_key(bits: int) -> str:
    """A DKIM key record's p= value: the DER public key of a new RSA key, in base64."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def txt(text: str) -> str:
    """A TXT record's data in zone-file syntax, cut into strings of 255 characters."""
    return " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))


KEY = dkim_key(2048)
SHORT_KEY = dkim_key(1024)


def domain(name: str, **broken: str | None) -> str:
    """The zone-file lines of a good sending domain `name`, with `broken` records instead of
    the good ones (None leaves a record out)."""
    records: dict[str, str | None] = {
        "mx": f"{name}. 60 IN MX 10 mx.{name}.\nmx.{name}. 60 IN A 127.0.0.25",
        "spf": f"{name}. 60 IN TXT {txt(f'v=spf1 ip4:{SENDER} include:_spf.{name} -all')}\n"
        f"_spf.{name}. 60 IN TXT {txt(f'v=spf1 ip4:{RELAY} -all')}",
        "dkim": f"s1._domainkey.{name}. 60 IN TXT {txt(f'v=DKIM1; k=rsa; p={KEY}')}",
        "dmarc": f"_dmarc.{name}. 60 IN TXT " + txt(f"v=DMARC1; p=reject; rua=mailto:dmarc@{name}"),
        # Something at the apex besides MX and TXT, as real domains have.
        "a": f"{name}. 60 IN A 127.0.0.80",
    }
    records.update(broken)
    return "\n".join(r for r in records.values() if r is not None) + "\n"


def chain(name: str, links: int) -> str:
    """An SPF record whose includes nest `links` deep: one lookup each."""
    lines = [f"{name}. 60 IN TXT {txt(f'v=spf1 include:l1.{name} -all')}"]
    for i in range(1, links):
        lines.append(f"l{i}.{name}. 60 IN TXT {txt(f'v=spf1 include:l{i + 1}.{name} -all')}")
    lines.append(f"l{links}.{name}. 60 IN TXT {txt(f'v=spf1 ip4:{SENDER} -all')}")
    return "\n".join(lines)


def record(name: str, text: str) -> str:
    return f"{name}. 60 IN TXT {txt(text)}"


ZONE = "".join(
    [
        domain("good.test"),
        domain("no-mx.test", mx=None),
        domain("null-mx.test", mx="null-mx.test. 60 IN MX 0 ."),
        domain("mx-nowhere.test", mx="mx-nowhere.test. 60 IN MX 10 gone.mx-nowhere.test."),
        domain("no-spf.test", spf=None),
        domain("bad-spf.test", spf=record("bad-spf.test", "v=spf1 ip4:300.1.1.1 -all")),
        domain(
            "two-spf.test",
            spf=record("two-spf.test", "v=spf1 -all")
            + "\n"
            + record("two-spf.test", "v=spf1 +all"),
        ),
        domain("deep-spf.test", spf=chain("deep-spf.test", 11)),
        domain("ok-spf.test", spf=chain("ok-spf.test", 10)),
        domain("no-dkim.test", dkim=None),
        domain("revoked-dkim.test", dkim=record("s1._domainkey.revoked-dkim.test", "v=DKIM1; p=")),
        domain("bad-dkim.test", dkim=record("s1._domainkey.bad-dkim.test", "p=bm90IGEga2V5")),
        domain("short-dkim.test", dkim=record("s1._domainkey.short-dkim.test", f"p={SHORT_KEY}")),
        domain("no-dmarc.test", dmarc=None),
        domain("lax-dmarc.test", dmarc=record("_dmarc.lax-dmarc.test", "v=DMARC1; p=none")),
        domain("bad-dmarc.test", dmarc=record("_dmarc.bad-dmarc.test", "v=DMARC1; p=maybe")),
        domain("worst.test", mx=None, dmarc=None, spf=None),
    ]
)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Zone, str]]:
    with dns_server(ZONE) as running:
        yield running


@pytest.fixture
def zone(server: tuple[Zone, str]) -> Iterator[Zone]:
    zone, _ = server
    yield zone
    zone.mode, zone.authenticated = "answer", False
    zone.load(ZONE)


@pytest.fixture
def nameserver(server: tuple[Zone, str]) -> str:
    return server[1]


def config(nameserver: str, name: str, **settings: Any) -> MailDomainProbe:
    return MailDomainProbe.model_validate(
        {
            "domain": name,
            "nameservers": [nameserver],
            "spf": {"hosts": [SENDER, RELAY]},
            "dkim": {"selectors": ["s1"]},
            **settings,
        }
    )


async def run(config: MailDomainProbe, timeout: float = 5.0) -> ProbeResult:
    return await run_probe(mail_domain.probe, config, timeout)


async def test_a_good_domain_passes_every_check_each_timed_as_its_phase(
    zone: Zone, nameserver: str
) -> None:
    result = await run(config(nameserver, "good.test"))
    assert result.success, result.message
    assert result.message == (
        "good.test: mx ok (1 host), spf ok (1 lookup, 2 hosts pass), s1 rsa 2048, dmarc p=reject"
    )
    assert dict(result.checks) == {"mx": True, "spf": True, "dkim:s1": True, "dmarc": True}
    assert set(result.phases) == {"mx", "spf", "dkim", "dmarc"}
    assert all(0 < seconds < 1 for seconds in result.phases.values())
    assert result.dnssec is False  # an authoritative server does not validate
    # Every answer came from the configured server; nothing from the system's resolver.
    asked = {name for name, _ in zone.queries}
    assert {"good.test", "mx.good.test", "_spf.good.test", "_dmarc.good.test"} <= asked


BROKEN = [  # domain, the check that fails, its message
    ("no-mx.test", "mx", "no MX record"),
    ("null-mx.test", "mx", "null MX: the domain accepts no mail"),
    ("mx-nowhere.test", "mx", "MX host without an address: gone.mx-nowhere.test"),
    ("no-spf.test", "spf", "no SPF record"),
    ("bad-spf.test", "spf", "permerror: Invalid IP4 address: ip4:300.1.1.1"),
    ("two-spf.test", "spf", "permerror: Two or more type TXT spf records found."),
    ("deep-spf.test", "spf", "permerror: Too many DNS lookups"),
    ("no-dkim.test", "dkim:s1", "no key at s1._domainkey.no-dkim.test"),
    ("revoked-dkim.test", "dkim:s1", "s1: key revoked (empty p=)"),
    ("bad-dkim.test", "dkim:s1", "s1: unusable key: could not parse RSA public key"),
    ("short-dkim.test", "dkim:s1", "s1: RSA key of 1024 bits, below 2048"),
    ("no-dmarc.test", "dmarc", "no DMARC record at _dmarc.no-dmarc.test"),
    ("lax-dmarc.test", "dmarc", "policy p=none, expected quarantine or reject"),
    ("bad-dmarc.test", "dmarc", "invalid record: p=maybe"),
]
REASONS = {"mx": Reason.MX, "spf": Reason.SPF, "dkim:s1": Reason.DKIM, "dmarc": Reason.DMARC}


@pytest.mark.parametrize(("name", "check", "message"), BROKEN)
async def test_each_broken_record_fails_its_own_check_with_its_reason(
    zone: Zone, nameserver: str, name: str, check: str, message: str
) -> None:
    settings: dict[str, Any] = {"dkim": {"selectors": ["s1"], "min_key_bits": 2048}}
    result = await run(config(nameserver, name, **settings))
    assert not result.success
    assert result.reason is REASONS[check]
    assert result.message == f"{name}: {check}: {message}"
    assert result.checks[check] is False
    assert [c for c, ok in result.checks.items() if not ok] == [check]  # the others pass


async def test_ten_nested_includes_are_within_the_limit_and_eleven_are_not(
    zone: Zone, nameserver: str
) -> None:
    ok = await run(config(nameserver, "ok-spf.test", spf={"hosts": [SENDER]}))
    assert ok.success, ok.message
    assert "spf ok (10 lookups, 1 host pass)" in ok.message
    deep = await run(config(nameserver, "deep-spf.test", spf={"hosts": []}))
    assert deep.reason is Reason.SPF


async def test_a_sending_host_the_record_does_not_authorise_fails_spf(
    zone: Zone, nameserver: str
) -> None:
    result = await run(config(nameserver, "good.test", spf={"hosts": [SENDER, STRANGER]}))
    assert result.reason is Reason.SPF
    assert result.message == ("good.test: spf: sending hosts not authorised: 127.0.0.99 fail")


async def test_every_failed_check_is_named_the_first_gives_the_reason(
    zone: Zone, nameserver: str
) -> None:
    result = await run(config(nameserver, "worst.test"))
    assert result.reason is Reason.MX
    assert result.message == (
        "worst.test: mx: no MX record; spf: no SPF record; "
        "dmarc: no DMARC record at _dmarc.worst.test"
    )
    assert dict(result.checks) == {"mx": False, "spf": False, "dkim:s1": True, "dmarc": False}


async def test_a_dmarc_policy_can_be_accepted_explicitly(zone: Zone, nameserver: str) -> None:
    result = await run(config(nameserver, "lax-dmarc.test", dmarc={"policy": ["none"]}))
    assert result.success, result.message


async def test_a_validating_resolver_s_ad_flag_is_the_dnssec_status(
    zone: Zone, nameserver: str
) -> None:
    required = config(nameserver, "good.test", dnssec="required")
    unsigned = await run(required)
    assert unsigned.reason is Reason.DNS
    assert unsigned.message.endswith("dnssec: answers not DNSSEC-validated (no AD)")
    zone.authenticated = True
    validated = await run(required)
    assert validated.success, validated.message
    assert validated.dnssec is True


async def test_a_resolver_answering_servfail_fails_with_dns(zone: Zone, nameserver: str) -> None:
    zone.mode = "servfail"
    result = await run(config(nameserver, "good.test"))
    assert result.reason is Reason.DNS
    assert result.message.startswith("good.test: mx: no resolver answered MX good.test: SERVFAIL")


async def test_a_resolver_that_never_answers_times_out_in_the_first_check(
    zone: Zone, nameserver: str
) -> None:
    zone.mode = "hang"
    started = time.monotonic()
    result = await run(config(nameserver, "good.test"), timeout=1.0)
    assert time.monotonic() - started < 2
    assert result.reason is Reason.TIMEOUT
    assert result.message == "timed out after 1s during mx"


async def test_a_record_changed_between_two_probes_is_seen_at_the_second(
    zone: Zone, nameserver: str
) -> None:
    probe = config(nameserver, "good.test")
    assert (await run(probe)).success
    zone.load(ZONE.replace("v=DMARC1; p=reject; rua", "v=DMARC1; p=none; rua"))
    changed = await run(probe)
    assert changed.reason is Reason.DMARC  # no cache between probes


def test_nameservers_take_a_port_ipv6_in_brackets_and_host_names() -> None:
    probe = MailDomainProbe.model_validate(
        {
            "domain": "Example.COM.",
            "nameservers": ["192.0.2.53", "127.0.0.1:5353", "[::1]:53", "::1", "Resolver:5353"],
        }
    )
    assert probe.domain == "example.com"
    assert probe.nameservers == [
        "192.0.2.53:53",
        "127.0.0.1:5353",
        "[::1]:53",
        "[::1]:53",
        "resolver:5353",
    ]


async def test_a_nameserver_given_by_host_name_is_looked_up(zone: Zone, nameserver: str) -> None:
    by_name = nameserver.replace("127.0.0.1", "localhost")
    result = await run(config(nameserver, "good.test", nameservers=[by_name]))
    assert result.success, result.message
    missing = await run(config(nameserver, "good.test", nameservers=["no-such-host.invalid:53"]))
    assert missing.reason is Reason.DNS
    assert missing.message == "cannot resolve nameserver no-such-host.invalid"
