"""The smtp probe against loopback servers: aiosmtpd, and a scripted one for broken dialogues."""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from conftest import server_context
from cryptography import x509
from smtp_servers import (
    CLOSE,
    PASSWORD,
    UNKNOWN,
    USER,
    CramMD5Mailbox,
    Echo,
    Mailbox,
    Script,
    aiosmtpd_server,
    scripted_server,
)

from sla_exporter.probes import smtp
from sla_exporter.probes.base import ProbeResult, Reason, run_probe
from sla_exporter.probes.smtp import SMTPProbe

EHLO_NAME = "probe.sla.example"
STARTTLS_EHLO = b"250-mx.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n"


def smtp_probe(port: int, **settings: Any) -> SMTPProbe:
    return SMTPProbe.model_validate(
        {"host": "127.0.0.1", "port": port, "ehlo_name": EHLO_NAME, **settings}
    )


async def run(config: SMTPProbe, timeout: float = 3.0) -> ProbeResult:
    return await run_probe(smtp.probe, config, timeout)


def not_after(cert: trustme.LeafCert) -> float:
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    return leaf.not_valid_after_utc.timestamp()


def auth(password: str = PASSWORD) -> dict[str, str]:
    return {"username": USER, "password": password}


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
async def starttls_port(mailbox: Mailbox, localhost_cert: trustme.LeafCert) -> AsyncIterator[int]:
    """aiosmtpd requiring STARTTLS, with AUTH offered only once TLS is up."""
    async with aiosmtpd_server(mailbox, starttls=server_context(localhost_cert)) as port:
        yield port


# --------------------------------------------------------------------------------------------
# Real dialogues with aiosmtpd


async def test_starttls_and_auth_succeed_with_every_phase_timed_and_the_expiry_recorded(
    starttls_port: int, ca_file: str, localhost_cert: trustme.LeafCert
) -> None:
    result = await run(smtp_probe(starttls_port, tls={"ca_file": ca_file}, auth=auth()))

    assert result.success, result.message
    assert result.message == "SMTP dialogue ok: STARTTLS, AUTH PLAIN, QUIT"
    assert {"connect", "banner", "ehlo", "starttls", "auth", "quit"} <= set(result.phases)
    assert "send" not in result.phases
    assert result.status_code == 221
    assert result.tls_expiry == pytest.approx(not_after(localhost_cert), abs=1)


async def test_a_wrong_password_fails_with_reason_auth_and_the_server_code(
    starttls_port: int, ca_file: str
) -> None:
    result = await run(smtp_probe(starttls_port, tls={"ca_file": ca_file}, auth=auth("wrong")))

    assert result.reason == Reason.AUTH
    assert result.message.startswith("login refused: 535")
    assert result.status_code == 535


async def test_auth_login_is_used_when_the_server_offers_no_other_mechanism(
    mailbox: Mailbox, localhost_cert: trustme.LeafCert, ca_file: str
) -> None:
    starttls = server_context(localhost_cert)
    async with aiosmtpd_server(mailbox, starttls=starttls, auth_exclude=("PLAIN",)) as port:
        config = {"tls": {"ca_file": ca_file}}
        good = await run(smtp_probe(port, **config, auth=auth()))
        wrong = await run(smtp_probe(port, **config, auth=auth("wrong")))

    assert good.success, good.message
    assert good.message == "SMTP dialogue ok: STARTTLS, AUTH LOGIN, QUIT"
    assert wrong.reason == Reason.AUTH
    assert wrong.message.startswith("login refused: 535")


async def test_auth_cram_md5_is_preferred_when_offered_and_answers_the_challenge(
    localhost_cert: trustme.LeafCert, ca_file: str
) -> None:
    mailbox = CramMD5Mailbox()
    async with aiosmtpd_server(mailbox, starttls=server_context(localhost_cert)) as port:
        config = {"tls": {"ca_file": ca_file}}
        good = await run(smtp_probe(port, **config, auth=auth()))
        wrong = await run(smtp_probe(port, **config, auth=auth("wrong")))

    assert good.success, good.message
    assert good.message == "SMTP dialogue ok: STARTTLS, AUTH CRAM-MD5, QUIT"
    assert wrong.reason == Reason.AUTH
    assert wrong.message.startswith("login refused: 535")
    assert wrong.status_code == 535


async def test_the_password_never_appears_in_the_result_or_the_logs_when_auth_fails(
    starttls_port: int, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hunter2-must-not-leak"
    caplog.set_level(logging.DEBUG)

    result = await run(smtp_probe(starttls_port, tls={"ca_file": ca_file}, auth=auth(secret)))

    assert result.reason == Reason.AUTH
    assert secret not in repr(result)
    assert secret not in caplog.text


async def test_the_ehlo_name_the_server_sees_is_the_configured_one_before_and_after_starttls(
    starttls_port: int, ca_file: str, mailbox: Mailbox
) -> None:
    result = await run(smtp_probe(starttls_port, tls={"ca_file": ca_file}))

    assert result.success, result.message
    assert mailbox.ehlo_names == [EHLO_NAME, EHLO_NAME]


async def test_a_test_message_is_delivered_exactly_once_from_and_to_the_configured_addresses(
    starttls_port: int, ca_file: str, mailbox: Mailbox
) -> None:
    send = {"from": "probe@sla.example", "to": ["postmaster@mx.test"], "subject": "SLA check"}

    result = await run(smtp_probe(starttls_port, tls={"ca_file": ca_file}, auth=auth(), send=send))

    assert result.success, result.message
    assert "send" in result.phases
    assert [(m.mail_from, m.rcpt_tos) for m in mailbox.messages] == [
        ("probe@sla.example", ["postmaster@mx.test"])
    ]
    content = mailbox.messages[0].content
    assert isinstance(content, bytes)
    assert b"Subject: SLA check" in content
    assert b"Auto-Submitted: auto-generated" in content


async def test_a_refused_recipient_fails_with_smtp_reply_and_its_code(
    starttls_port: int, ca_file: str, mailbox: Mailbox
) -> None:
    mailbox.refuse_recipients.add("nobody@mx.test")
    send = {"from": "probe@sla.example", "to": ["postmaster@mx.test", "nobody@mx.test"]}

    result = await run(smtp_probe(starttls_port, tls={"ca_file": ca_file}, auth=auth(), send=send))

    assert result.reason == Reason.SMTP_REPLY
    assert result.message.startswith("RCPT TO nobody@mx.test refused: 550")
    assert result.status_code == 550
    assert mailbox.messages == []


@pytest.mark.parametrize("cert_name", ["self_signed_cert", "expired_cert", "wrong_host_cert"])
async def test_a_certificate_that_does_not_verify_fails_with_reason_tls(
    cert_name: str, ca_file: str, mailbox: Mailbox, request: pytest.FixtureRequest
) -> None:
    cert: trustme.LeafCert = request.getfixturevalue(cert_name)
    async with aiosmtpd_server(mailbox, starttls=server_context(cert)) as port:
        result = await run(smtp_probe(port, tls={"ca_file": ca_file}, auth=auth()))

    assert result.reason == Reason.TLS
    assert result.message.startswith("certificate rejected")
    assert "starttls" in result.phases


async def test_tls_server_name_verifies_a_certificate_issued_for_another_name(
    ca_file: str, mailbox: Mailbox, wrong_host_cert: trustme.LeafCert
) -> None:
    tls = {"ca_file": ca_file, "server_name": "not-this-host.example"}
    async with aiosmtpd_server(mailbox, starttls=server_context(wrong_host_cert)) as port:
        result = await run(smtp_probe(port, tls=tls))

    assert result.success, result.message


@pytest.mark.parametrize("cert_name", ["self_signed_cert", "expired_cert"])
async def test_verification_off_accepts_a_bad_certificate_and_still_records_its_expiry(
    cert_name: str, mailbox: Mailbox, request: pytest.FixtureRequest
) -> None:
    cert: trustme.LeafCert = request.getfixturevalue(cert_name)
    async with aiosmtpd_server(mailbox, starttls=server_context(cert)) as port:
        result = await run(smtp_probe(port, tls={"verify": False}, auth=auth()))

    assert result.success, result.message
    assert result.tls_expiry == pytest.approx(not_after(cert), abs=1)


async def test_implicit_tls_succeeds_against_a_server_that_speaks_tls_from_the_first_byte(
    ca_file: str, mailbox: Mailbox, localhost_cert: trustme.LeafCert
) -> None:
    send = {"from": "probe@sla.example", "to": ["postmaster@mx.test"]}
    async with aiosmtpd_server(mailbox, implicit_tls=server_context(localhost_cert)) as port:
        config = smtp_probe(
            port, implicit_tls=True, tls={"ca_file": ca_file}, auth=auth(), send=send
        )
        result = await run(config)

    assert result.success, result.message
    assert result.message.startswith("SMTP dialogue ok: TLS, AUTH PLAIN")
    assert {"connect", "tls", "banner", "ehlo", "auth", "send", "quit"} <= set(result.phases)
    assert "starttls" not in result.phases
    assert result.tls_expiry == pytest.approx(not_after(localhost_cert), abs=1)
    assert len(mailbox.messages) == 1


async def test_implicit_tls_to_a_silent_server_times_out_during_tls() -> None:
    async with scripted_server(Script(banner=None)) as port:
        result = await run(smtp_probe(port, implicit_tls=True), timeout=0.5)

    assert result.reason == Reason.TIMEOUT
    assert result.message == "timed out after 0.5s during tls"


async def test_implicit_tls_to_a_server_silent_after_the_handshake_times_out_during_the_banner(
    ca_file: str, localhost_cert: trustme.LeafCert
) -> None:
    tls = server_context(localhost_cert)
    async with scripted_server(Script(banner=None), tls=tls) as port:
        result = await run(smtp_probe(port, implicit_tls=True, tls={"ca_file": ca_file}), 0.5)

    assert result.reason == Reason.TIMEOUT
    assert result.message == "timed out after 0.5s during banner"
    assert {"connect", "tls", "banner"} <= set(result.phases)
    assert result.tls_expiry == pytest.approx(not_after(localhost_cert), abs=1)


async def test_implicit_tls_against_a_plain_text_server_fails_with_reason_tls() -> None:
    async with scripted_server(Script()) as port:
        result = await run(smtp_probe(port, implicit_tls=True))

    assert result.reason == Reason.TLS
    assert "tls" in result.phases


# --------------------------------------------------------------------------------------------
# Broken dialogues with the scripted server


async def test_garbage_instead_of_an_ehlo_reply_fails_with_reason_protocol() -> None:
    async with scripted_server(
        Script(replies={"EHLO": b"<html><body>hi</body></html>\r\n"})
    ) as port:
        result = await run(smtp_probe(port))

    assert result.reason == Reason.PROTOCOL
    assert result.message == "not an SMTP reply during ehlo: <html><body>hi</body></html>"


async def test_a_554_banner_fails_with_smtp_reply_and_code_554() -> None:
    script = Script(banner=b"554 5.3.2 no SMTP service here\r\n")
    async with scripted_server(script) as port:
        result = await run(smtp_probe(port))

    assert result.reason == Reason.SMTP_REPLY
    assert result.status_code == 554
    assert result.message == "server greeted with 554 instead of 220: 5.3.2 no SMTP service here"


async def test_garbage_instead_of_a_banner_fails_with_reason_protocol() -> None:
    async with scripted_server(Script(banner=b"SSH-2.0-OpenSSH_9.6\r\n")) as port:
        result = await run(smtp_probe(port))

    assert result.reason == Reason.PROTOCOL
    assert result.message == "not an SMTP reply during banner: SSH-2.0-OpenSSH_9.6"
    assert result.status_code is None


async def test_a_server_that_never_says_anything_times_out_during_the_banner() -> None:
    async with scripted_server(Script(banner=None)) as port:
        result = await run(smtp_probe(port), timeout=0.5)

    assert result.reason == Reason.TIMEOUT
    assert result.message == "timed out after 0.5s during banner"
    assert "connect" in result.phases


async def test_required_starttls_fails_with_reason_starttls_when_the_server_does_not_offer_it() -> (
    None
):
    async with scripted_server(Script()) as port:
        result = await run(smtp_probe(port, starttls="required"))

    assert result.reason == Reason.STARTTLS
    assert result.message == "server does not offer STARTTLS"


async def test_opportunistic_starttls_succeeds_without_tls_when_the_server_does_not_offer_it() -> (
    None
):
    script = Script()
    async with scripted_server(script) as port:
        result = await run(smtp_probe(port, starttls="opportunistic"))

    assert result.success, result.message
    assert result.message == "SMTP dialogue ok: STARTTLS not offered, QUIT"
    assert "starttls" not in result.phases
    assert result.tls_expiry is None
    assert script.received == [f"EHLO {EHLO_NAME}", "QUIT"]


async def test_starttls_off_never_upgrades_even_when_offered() -> None:
    script = Script(replies={"EHLO": STARTTLS_EHLO})
    async with scripted_server(script) as port:
        result = await run(smtp_probe(port, starttls="off"))

    assert result.success, result.message
    assert script.received == [f"EHLO {EHLO_NAME}", "QUIT"]


async def test_a_refused_starttls_fails_with_smtp_reply_and_its_code() -> None:
    script = Script(replies={"EHLO": STARTTLS_EHLO, "STARTTLS": b"454 4.7.0 TLS not available\r\n"})
    async with scripted_server(script) as port:
        result = await run(smtp_probe(port))

    assert result.reason == Reason.SMTP_REPLY
    assert result.message == "STARTTLS refused: 454 4.7.0 TLS not available"
    assert result.status_code == 454


async def test_a_refused_ehlo_fails_with_smtp_reply_and_its_code() -> None:
    script = Script(replies={"EHLO": b"550 5.7.1 go away\r\n"})
    async with scripted_server(script) as port:
        result = await run(smtp_probe(port, starttls="off"))

    assert result.reason == Reason.SMTP_REPLY
    assert result.message == "EHLO refused: 550 5.7.1 go away"
    assert result.status_code == 550


async def test_a_server_that_closes_the_connection_mid_dialogue_fails_with_reason_protocol() -> (
    None
):
    async with scripted_server(Script(replies={"EHLO": CLOSE})) as port:
        result = await run(smtp_probe(port))

    assert result.reason == Reason.PROTOCOL
    assert result.message == "server closed the connection during ehlo"


async def test_auth_fails_with_a_clear_message_when_the_server_does_not_offer_it() -> None:
    async with scripted_server(Script()) as port:
        result = await run(smtp_probe(port, starttls="off", auth=auth()))

    assert result.reason == Reason.AUTH
    assert result.message == "server does not offer AUTH without TLS"


async def test_credentials_are_never_sent_over_a_connection_without_tls() -> None:
    ehlo = b"250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n"
    script = Script(replies={"EHLO": ehlo, "AUTH": b"235 2.7.0 ok\r\n"})
    async with scripted_server(script) as port:
        result = await run(smtp_probe(port, starttls="opportunistic", auth=auth()))

    assert result.reason == Reason.AUTH
    assert result.message == "refusing to send credentials without TLS"
    assert not any(line.upper().startswith("AUTH") for line in script.received)


async def test_a_reply_that_never_ends_fails_at_its_size_bound_not_at_the_timeout() -> None:
    # One multi-line EHLO reply streamed for the whole timeout took the exporter from 65 MB to
    # 1.17 GB. The whole reply is bounded, not only each line: the probe stops reading at once.
    script = Script(endless={"EHLO": b"250-" + b"X" * 200 + b"\r\n"})
    async with scripted_server(script) as port:
        result = await run(smtp_probe(port, starttls="off"), timeout=10)

    assert result.reason == Reason.PROTOCOL
    assert result.message.startswith(f"reply longer than {smtp.MAX_REPLY} bytes during ehlo")
    assert result.duration < 5  # not the 10 s timeout
    assert script.sent < 32 << 20  # what socket buffers hold past the bound, not 256 MiB


def _echo(code: bytes) -> Echo:
    """A server that quotes the client's line back in its refusal."""
    return lambda line: code + b" 5.7.8 authentication failed for " + line.encode() + b"\r\n"


@pytest.mark.parametrize(
    ("mechanism", "replies"),
    [
        ("PLAIN", {"AUTH": _echo(b"535")}),
        ("LOGIN", {"AUTH": b"334 UGFzc3dvcmQ6\r\n", UNKNOWN: _echo(b"535")}),
        ("CRAM-MD5", {"AUTH": b"334 PDEyMzQ1QG14LnRlc3Q+\r\n", UNKNOWN: _echo(b"535")}),
    ],
)
async def test_a_server_that_echoes_auth_back_never_gets_a_secret_into_the_result(
    mechanism: str,
    replies: dict[str, bytes | Echo],
    localhost_cert: trustme.LeafCert,
    ca_file: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The AUTH PLAIN token (user and password in base64) used to reach the landing page and a
    # WARNING log through the refusal's text.
    ehlo = f"250-mx.test\r\n250 AUTH {mechanism}\r\n".encode()
    script = Script(replies={"EHLO": ehlo, **replies})
    caplog.set_level(logging.DEBUG)
    async with scripted_server(script, tls=server_context(localhost_cert)) as port:
        result = await run(
            smtp_probe(port, implicit_tls=True, tls={"ca_file": ca_file}, auth=auth())
        )

    assert result.reason == Reason.AUTH
    assert "authentication failed for" in result.message  # the echo was there, masked
    sent = [line.rpartition(" ")[2] for line in script.received if line not in ("", "QUIT")]
    secrets = {PASSWORD, base64.b64encode(PASSWORD.encode()).decode(), *sent[2:]}
    if mechanism == "PLAIN":
        secrets.add(sent[1])  # AUTH PLAIN <token>
    for secret in secrets:
        assert secret not in result.message
        assert secret not in caplog.text
    assert "***" in result.message


async def test_a_refused_connection_fails_with_reason_connect() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound but not listening: connecting is refused

        result = await run(smtp_probe(port))

    assert result.reason == Reason.CONNECT
    assert result.message == "connection refused"
    assert "connect" in result.phases
