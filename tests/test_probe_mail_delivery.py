"""The mail_delivery probe through a real Postfix and Dovecot on loopback (mail_servers.py):
delivered, delayed in Postfix's deferred queue, rejected, mailbox login refused, IMAP hung."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from mail_servers import DOMAIN, INBOX, PASSWORD, SENDER, MailSystem, mail_system

from sla_exporter.probes import mail_delivery
from sla_exporter.probes.base import ProbeResult, Reason, run_probe
from sla_exporter.probes.mail_delivery import MailDeliveryProbe


@pytest.fixture(scope="module")
def mail(ca: trustme.CA) -> Iterator[MailSystem]:
    with mail_system(ca) as system:
        yield system


@pytest.fixture
def system(mail: MailSystem) -> Iterator[MailSystem]:
    mail.empty()
    yield mail
    mail.hang_imap(False)


def config(mail: MailSystem, ca_file: str, **changes: Any) -> MailDeliveryProbe:
    tls = {"ca_file": ca_file}
    settings: dict[str, Any] = {
        "submit": {
            "host": "127.0.0.1",
            "port": mail.submission,
            "tls": tls,
            "auth": {"username": SENDER, "password": PASSWORD},
            "from": SENDER,
        },
        "to": INBOX,
        "mailbox": {
            "host": "127.0.0.1",
            "port": mail.imaps,
            "tls": tls,
            "username": INBOX,
            "password": PASSWORD,
        },
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return MailDeliveryProbe.model_validate(settings)


async def run(config: MailDeliveryProbe, timeout: float = 5.0) -> ProbeResult:
    result = await run_probe(mail_delivery.probe, config, timeout)
    await mail_delivery.wait_for_cleanups()
    return result


def wait_until(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.1)


async def test_a_message_submitted_arrives_and_is_deleted_after(
    system: MailSystem, ca_file: str
) -> None:
    result = await run(config(system, ca_file))
    assert result.success, f"{result.message}\n{system.logs()}"
    assert result.message.startswith("delivered in ")
    assert set(result.phases) == {"mailbox", "submit", "delivery"}
    assert result.delivery is not None
    # End to end: from the start of the submission to the first sight in the mailbox.
    assert result.delivery == pytest.approx(
        result.phases["submit"] + result.phases["delivery"], abs=0.01
    )
    assert 0 < result.delivery < 5
    assert result.tls_expiry is not None  # the certificates of both servers were seen
    assert result.late == 0
    assert result.checks == {"delivered": True}
    assert system.messages() == []  # the mailbox does not fill up


async def test_imap_with_starttls_reads_the_same_mailbox(system: MailSystem, ca_file: str) -> None:
    probe = config(system, ca_file, mailbox={"port": system.imap, "security": "starttls"})
    result = await run(probe)
    assert result.success, f"{result.message}\n{system.logs()}"
    assert system.messages() == []


async def test_a_message_held_in_the_deferred_queue_fails_then_counts_as_late_not_as_delivered(
    system: MailSystem, ca_file: str
) -> None:
    probe = config(system, ca_file)
    system.defer_delivery(True)
    try:
        held = await run(probe, timeout=3.0)
        assert held.reason is Reason.NOT_DELIVERED
        assert held.message == "message accepted but not in INBOX in time"
        assert held.delivery is None
        assert held.checks == {"delivered": False}
        waited = 3.0 - held.phases["mailbox"] - held.phases["submit"]
        assert held.phases["delivery"] == pytest.approx(waited, abs=0.2)  # until the deadline
        assert system.queued() == 1
    finally:
        system.defer_delivery(False)
    system.flush()
    wait_until(lambda: len(system.messages()) == 1, "the held message delivered")
    (late_token,) = system.messages()

    after = await run(probe)
    assert after.success, after.message
    assert after.late == 1  # the held message, found by this run and counted as late
    assert after.message.endswith("; 1 late message found")
    assert after.delivery is not None and after.delivery < 3  # its own message, not the late one
    assert late_token not in system.messages()
    assert system.messages() == []

    again = await run(probe)
    assert again.success and again.late == 0  # counted once


async def test_a_refused_recipient_fails_the_submission(system: MailSystem, ca_file: str) -> None:
    result = await run(config(system, ca_file, to=f"nobody@{DOMAIN}"))
    assert result.reason is Reason.SMTP_REPLY
    assert result.message.startswith(f"submit refused: RCPT TO 550 5.1.1 <nobody@{DOMAIN}>")
    assert result.status_code == 550
    assert set(result.phases) == {"mailbox", "submit"}
    assert result.checks == {}  # nothing was handed over, so nothing is "not delivered"


async def test_a_refused_smtp_login_fails_with_auth_and_keeps_the_password_out(
    system: MailSystem, ca_file: str
) -> None:
    wrong = {"username": SENDER, "password": "wrong-" + PASSWORD}
    result = await run(config(system, ca_file, submit={"auth": wrong}))
    assert result.reason is Reason.AUTH
    assert result.message.startswith("submit: login refused: 535")
    assert PASSWORD not in result.message


async def test_a_refused_mailbox_login_fails_before_anything_is_sent(
    system: MailSystem, ca_file: str
) -> None:
    queued = system.queued()
    result = await run(config(system, ca_file, mailbox={"password": "wrong-" + PASSWORD}))
    assert result.reason is Reason.MAILBOX
    assert result.message.startswith("IMAP login refused: NO [AUTHENTICATIONFAILED]")
    assert PASSWORD not in result.message
    assert set(result.phases) == {"mailbox"}
    assert system.queued() == queued and system.messages() == []


async def test_a_missing_folder_fails_with_mailbox(system: MailSystem, ca_file: str) -> None:
    result = await run(config(system, ca_file, mailbox={"folder": "Probes"}))
    assert result.reason is Reason.MAILBOX
    assert result.message.startswith("IMAP SELECT Probes refused: NO")


async def test_a_hung_imap_server_times_out_in_the_mailbox_phase(
    system: MailSystem, ca_file: str
) -> None:
    system.hang_imap(True)
    started = time.monotonic()
    result = await run(config(system, ca_file), timeout=1.5)
    assert time.monotonic() - started < 3
    assert result.reason is Reason.TIMEOUT
    assert result.message == "timed out after 1.5s during mailbox"


async def test_a_closed_imap_port_fails_to_connect_naming_the_mailbox(
    system: MailSystem, ca_file: str
) -> None:
    from helpers import free_port

    result = await run(config(system, ca_file, mailbox={"port": free_port()}))
    assert result.reason is Reason.CONNECT
    assert result.message == "mailbox: connection refused"


async def test_other_messages_and_other_exporters_fresh_probe_messages_are_left_alone(
    system: MailSystem, ca_file: str
) -> None:
    now_ms = int(time.time() * 1000)
    fresh = f"sla-0000beef-{now_ms}-00000001"  # another location's, a second old
    stale = f"sla-0000beef-{now_ms - 7_200_000}-00000002"  # two hours old: cleaned up
    for header in (fresh, stale):
        system.deliver(f"X-SLA-Probe: {header}\r\nSubject: probe\r\n\r\nx\r\n".encode())
    system.deliver(b"Subject: a person's message\r\n\r\nhello\r\n")
    result = await run(config(system, ca_file))
    assert result.success, result.message
    assert result.late == 0  # another exporter's messages are not this one's to count
    assert sorted(system.messages()) == sorted([fresh, ""])


async def test_a_message_without_the_expected_dkim_signature_fails_dkim(
    system: MailSystem, ca_file: str
) -> None:
    result = await run(config(system, ca_file, dkim={"domain": DOMAIN}))
    assert result.reason is Reason.DKIM
    assert result.message == "delivered message has no DKIM signature"
    assert result.checks == {"delivered": True, "dkim_signature": False}
    assert result.delivery is not None  # it was delivered, in time
    assert system.messages() == []
