"""The demo's mail stand-ins, probed by the real mail kinds: the SMTP service delivering to a
mailbox read over IMAPS, and the sending domain's DNS; each with its outage switch."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sla_exporter.probes import mail_delivery, mail_domain
from sla_exporter.probes.base import ProbeResult, Reason, run_probe
from tests.helpers import free_port, wait_for
from tests.stack import Process, http_get, start


@dataclass
class Demo:
    http: int
    smtp: int
    imap: int
    dns: int
    ca_file: Path

    def switch(self, service: str, up: bool) -> None:
        state = "up" if up else "down"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http}/-/demo/{state}/{service}",
            method="POST",
            headers={"Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5):
            pass


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp("demo-mail")
    running = Demo(free_port(), free_port(), free_port(), free_port(), workdir / "ca.pem")
    args = [sys.executable, "-m", "sla_demo", "--receiver-port", str(free_port())]
    args += ["--http-port", str(running.http), "--smtp-port", str(running.smtp)]
    args += ["--imap-port", str(running.imap), "--dns-port", str(running.dns)]
    args += ["--ca-file", str(running.ca_file)]
    process: Process = start("demo", args, workdir)
    try:
        wait_for(
            lambda: process.alive() or http_get(f"http://127.0.0.1:{running.http}/-/demo"),
            "the demo",
        )
        yield running
    finally:
        process.stop()


def delivery(demo: Demo, **more: Any) -> mail_delivery.MailDeliveryProbe:
    tls = {"ca_file": str(demo.ca_file), "server_name": "localhost"}
    login = {"username": "probe@demo.invalid", "password": "demo-smtp-password"}
    submit = {"host": "127.0.0.1", "port": demo.smtp, "tls": tls, "auth": login}
    submit |= {"from": "probe@demo.invalid", "ehlo_name": "probe.localhost"}
    return mail_delivery.MailDeliveryProbe.model_validate(
        {
            "submit": submit,
            "to": "inbox@demo.invalid",
            "mailbox": {
                "host": "127.0.0.1",
                "port": demo.imap,
                "tls": tls,
                "username": "inbox@demo.invalid",
                "password": "demo-smtp-password",
            },
            **more,
        }
    )


async def deliver(demo: Demo, timeout: float = 2.0, **more: Any) -> ProbeResult:
    result = await run_probe(mail_delivery.probe, delivery(demo, **more), timeout)
    await mail_delivery.wait_for_cleanups()
    return result


async def test_the_demo_delivers_and_holds_mail_that_then_arrives_late(demo: Demo) -> None:
    first = await deliver(demo)
    assert first.success, first.message
    demo.switch("delivery", up=False)
    try:
        held = await deliver(demo, timeout=1.0)
        assert held.reason is Reason.NOT_DELIVERED
    finally:
        demo.switch("delivery", up=True)
    after = await deliver(demo)
    assert after.success and after.late == 1, after.message


async def test_the_demo_domain_passes_every_check_until_taken_down(demo: Demo) -> None:
    config = mail_domain.MailDomainProbe.model_validate(
        {
            "domain": "demo.invalid",
            "nameservers": [f"127.0.0.1:{demo.dns}"],
            "spf": {"hosts": ["192.0.2.25"]},
            "dkim": {"selectors": ["s1"]},
        }
    )
    good = await run_probe(mail_domain.probe, config, 3.0)
    assert good.success, good.message
    assert good.dnssec is False  # the demo's zone is not signed
    demo.switch("sender", up=False)
    try:
        broken = await run_probe(mail_domain.probe, config, 3.0)
    finally:
        demo.switch("sender", up=True)
    assert broken.reason is Reason.DKIM
    assert dict(broken.checks) == {"mx": True, "spf": True, "dkim:s1": False, "dmarc": False}


async def test_the_demo_signs_what_it_delivers_and_the_probe_verifies_it(demo: Demo) -> None:
    nameservers = [f"127.0.0.1:{demo.dns}"]
    signed = await deliver(demo, dkim={"domain": "demo.invalid", "nameservers": nameservers})
    assert signed.success, signed.message
    assert signed.message.endswith(", DKIM signature of demo.invalid valid")
    assert dict(signed.checks) == {"delivered": True, "dkim_signature": True}
    assert set(signed.phases) == {"mailbox", "submit", "delivery", "dkim"}
    # Another domain's signature is not the one asked for.
    other = await deliver(demo, dkim={"domain": "example.com", "nameservers": nameservers})
    assert other.reason is Reason.DKIM
    assert other.message == "no DKIM signature of example.com (signed by demo.invalid)"
    # The key withdrawn from DNS (the sender outage): the signature no longer verifies.
    demo.switch("sender", up=False)
    try:
        unverified = await deliver(
            demo, dkim={"domain": "demo.invalid", "nameservers": nameservers}
        )
    finally:
        demo.switch("sender", up=True)
    assert unverified.reason is Reason.DKIM
    assert unverified.message == "DKIM signature of demo.invalid does not verify"
