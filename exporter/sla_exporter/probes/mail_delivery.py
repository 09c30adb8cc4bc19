"""The mail_delivery probe kind: a tagged message submitted over SMTP must reach a mailbox read
over IMAP within the service's timeout; then it is deleted.

One run: log in to the mailbox (IMAPS or STARTTLS) and look for probe messages already there;
submit a new one through the SMTP service (STARTTLS or implicit TLS, AUTH) with aiosmtplib;
wait for it with IMAP IDLE (or by asking every half second where IDLE is not offered) until it
is first seen; optionally verify its DKIM signature (dkimpy); delete it. Checks (in
`sla_probe_check_success`): `delivered` once a message was handed over, `dkim_signature`
when asked for; the alerts tell "not delivered" apart from the submission failing by the first.
Phases: `mailbox`,
`submit`, `delivery` (until first seen), `dkim`. The end-to-end time, from the start of the
submission to the first sight, is the delivery time (`sla_probe_delivery_seconds`).

Each message carries its own token (`X-SLA-Probe: sla-<process>-<sent ms>-<random>`), so a
probe only ever counts its own message. A message whose probe gave up (not delivered in time)
is remembered; when a later run finds it, it is counted as late (`sla_probe_late_deliveries`),
never as that run's. Probe messages are deleted by UID (UIDPLUS), never with a plain EXPUNGE
that would take other messages flagged deleted with them; those of other exporters (another
location) are left alone until they are older than `cleanup_after`. Non-probe messages are
never touched.

aioimaplib is the IMAP client: asyncio-native (a hung server costs a pending read, not a
thread), IDLE, UID commands with UIDPLUS, and its login keeps the password out of its logs. It
has no STARTTLS command, so that step is done here with the event loop's own `start_tls` on the
client's transport, as aiosmtplib does for SMTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Annotated, Any, Literal

import aioimaplib
import aiosmtplib
import dkim
from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    StrictBool,
    ValidationInfo,
    field_validator,
)

from ..durations import format_duration
from ..values import TLS, Duration, Model, Port, custom, reveal, show
from . import mail_domain
from .base import Kind, ProbeFailed, Reason, Trace, bounded, certificate_expiry, network_failure
from .tls import client_context

# aioimaplib logs every line it sends and receives at DEBUG (the messages read included) and
# each untagged response it does not use at INFO: neither is news to the exporter's log.
logging.getLogger("aioimaplib").setLevel(logging.WARNING)

SERVER_TEXT = 120  # characters of a server's reply quoted in a failure message
HEADER = "X-SLA-Probe"
POLL = 0.5  # seconds between two looks at the mailbox when the server offers no IDLE
IDLE_RECHECK = 5.0  # seconds an IDLE waits before looking again anyway (a missed push)
CLEANUP_TIMEOUT = 10.0  # seconds the deletion after a run may take, apart from the probe

# --------------------------------------------------------------------------------------------
# Config: the `mail_delivery:` section of a service


def _host(value: str) -> str:
    if not value or "/" in value or any(c.isspace() for c in value):
        raise custom("host", f"must be a host name or IP address, got {show(value)}")
    if value.count(":") == 1:
        raise custom("host", f"must not include a port (use port), got {show(value)}")
    return value


Host = Annotated[str, AfterValidator(_host)]
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


def _address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise custom(
            "address", f"must be an e-mail address like probe@example.com, got {show(value)}"
        )
    return value


Address = Annotated[str, AfterValidator(_address)]


class Login(Model):
    username: str = Field(min_length=1)
    password: SecretStr


class Submit(Model):
    """The SMTP service the message is handed to: TLS (STARTTLS or implicit), then AUTH."""

    host: Host
    port: Port | None = None
    implicit_tls: StrictBool = False
    tls: TLS = TLS()
    auth: Login
    from_: Address = Field(alias="from")
    ehlo_name: str | None = None

    @field_validator("tls")
    @classmethod
    def _server_name(cls, tls: TLS, info: ValidationInfo) -> TLS:
        if info.data.get("implicit_tls") and tls.server_name is not None:
            raise custom(
                "server_name",
                "is not supported with implicit_tls; use that name as host",
                field="server_name",
            )
        return tls

    @property
    def effective_port(self) -> int:
        """`port`, or 465 with implicit TLS and 587 (submission) without."""
        return self.port or (465 if self.implicit_tls else 587)


class Mailbox(Model):
    """The mailbox the message must arrive in, read over IMAP."""

    host: Host
    port: Port | None = None
    security: Literal["implicit_tls", "starttls"] = "implicit_tls"
    tls: TLS = TLS()
    username: str = Field(min_length=1)
    password: SecretStr
    folder: str = Field(default="INBOX", min_length=1)

    @property
    def effective_port(self) -> int:
        """`port`, or 993 with implicit TLS and 143 with STARTTLS."""
        return self.port or (993 if self.security == "implicit_tls" else 143)


class DKIMSignature(Model):
    """The delivered message must carry a valid DKIM signature of `domain` (d=)."""

    domain: mail_domain.Domain
    nameservers: list[mail_domain.Nameserver] = []  # for the key; the system's when empty


class MailDeliveryProbe(Model):
    submit: Submit
    to: Address  # the recipient whose mailbox `mailbox` reads
    mailbox: Mailbox
    # Probe messages older than this are deleted whoever sent them (another location's, or one
    # from before a restart); younger ones of other exporters are left for them.
    cleanup_after: Duration = 3600.0
    dkim: DKIMSignature | None = None

    @field_validator("cleanup_after")
    @classmethod
    def _cleanup(cls, cleanup_after: float) -> float:
        if cleanup_after < 60:
            raise custom(
                "cleanup_after", f"must be at least 1m, got {format_duration(cleanup_after)}"
            )
        return cleanup_after


# --------------------------------------------------------------------------------------------
# Which messages are whose

INSTANCE = secrets.token_hex(4)  # this process; its tokens are the ones it may count as late
_TOKEN = re.compile(r"sla-([0-9a-f]{8})-([0-9]{10,16})-([0-9a-f]{8})")


def new_token(now: float) -> str:
    return f"sla-{INSTANCE}-{int(now * 1000)}-{secrets.token_hex(4)}"


MailboxKey = tuple[str, int, str, str]
MAX_PENDING = 1000  # tokens remembered per mailbox; beyond, the oldest is forgotten


@dataclass
class _Pending:
    """Tokens of this process's messages whose probe ended before seeing them, per mailbox."""

    by_mailbox: dict[MailboxKey, dict[str, float]] = field(default_factory=dict)

    def add(self, key: MailboxKey, token: str, sent: float) -> None:
        tokens = self.by_mailbox.setdefault(key, {})
        tokens[token] = sent
        while len(tokens) > MAX_PENDING:
            del tokens[next(iter(tokens))]

    def take(self, key: MailboxKey, token: str) -> bool:
        """Whether `token` was pending (it is not any more)."""
        return self.by_mailbox.get(key, {}).pop(token, None) is not None

    def expire(self, key: MailboxKey, before: float) -> None:
        tokens = self.by_mailbox.get(key, {})
        for token in [t for t, sent in tokens.items() if sent < before]:
            del tokens[token]


PENDING = _Pending()


def _key(mailbox: Mailbox) -> MailboxKey:
    return (mailbox.host, mailbox.effective_port, mailbox.username, mailbox.folder)


# --------------------------------------------------------------------------------------------
# IMAP


class _IMAP(aioimaplib.IMAP4):  # type: ignore[misc]  # aioimaplib is untyped
    """aioimaplib's client, connecting with the probe's TLS context and server name."""

    def __init__(self, mailbox: Mailbox, context: ssl.SSLContext) -> None:
        self.context = context
        self.server_name = mailbox.tls.server_name or mailbox.host
        self.implicit = mailbox.security == "implicit_tls"
        # Timeouts of its own well beyond any probe's: the probe's deadline ends a hung read.
        super().__init__(mailbox.host, mailbox.effective_port, timeout=3600)

    def create_client(
        self, host: str, port: int, loop: Any, conn_lost_cb: Any = None, ssl_context: Any = None
    ) -> None:
        loop = asyncio.get_running_loop()
        self.protocol = aioimaplib.IMAP4ClientProtocol(loop, conn_lost_cb)
        self._client_task = loop.create_task(
            loop.create_connection(
                lambda: self.protocol,
                host,
                port,
                ssl=self.context if self.implicit else None,
                server_hostname=self.server_name if self.implicit else None,
            )
        )

    def tls_object(self) -> ssl.SSLObject | None:
        transport = getattr(self.protocol, "transport", None)
        return None if transport is None else transport.get_extra_info("ssl_object")

    async def starttls(self) -> None:
        if "STARTTLS" not in self.protocol.capabilities:
            raise ProbeFailed(Reason.STARTTLS, "IMAP server does not offer STARTTLS")
        protocol = self.protocol
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await protocol.execute(command)
        _ok(response, "STARTTLS")
        protocol.transport = await protocol.loop.start_tls(
            protocol.transport, protocol, self.context, server_hostname=self.server_name
        )
        await protocol.capability()  # RFC 3501 6.2.1: what was said before TLS is forgotten

    def close_now(self) -> None:
        transport = getattr(self.protocol, "transport", None)
        if transport is not None:
            transport.close()


def _text(response: Any) -> str:
    lines = [bytes(line).decode("utf-8", "replace") for line in response.lines]
    return bounded(" ".join(lines), SERVER_TEXT)


def _ok(response: Any, command: str, reason: Reason = Reason.MAILBOX) -> None:
    if response.result != "OK":
        raise ProbeFailed(reason, f"IMAP {command} refused: {response.result} {_text(response)}")


_UID = re.compile(rb"UID (\d+)")


def _uids(response: Any) -> list[str]:
    """The UIDs a UID SEARCH found."""
    _ok(response, "SEARCH")
    found: list[str] = []
    for line in response.lines[:-1]:  # the last line is the tagged OK's text
        found += [part for part in bytes(line).decode().split() if part.isdigit()]
    return found


async def _search(client: _IMAP, *criteria: str) -> list[str]:
    response = await client.protocol.search(*criteria, charset=None, by_uid=True)
    return _uids(response)


async def _tokens(client: _IMAP, uids: list[str]) -> dict[str, str]:
    """The token of each of `uids` (those whose header holds one)."""
    if not uids:
        return {}
    response = await client.protocol.uid(
        "FETCH", ",".join(uids), f"(UID BODY.PEEK[HEADER.FIELDS ({HEADER})])"
    )
    _ok(response, "FETCH")
    found: dict[str, str] = {}
    uid = None
    for line in response.lines:
        data = bytes(line)
        match = _UID.search(data)
        if match is not None and b"FETCH" in data:
            uid = match[1].decode()
            continue
        token = _TOKEN.search(data.decode("ascii", "replace"))
        if uid is not None and token is not None:
            found[uid] = token[0]
            uid = None
    return found


# --------------------------------------------------------------------------------------------
# The probe


@dataclass
class _Run:
    config: MailDeliveryProbe
    trace: Trace
    key: MailboxKey
    token: str = ""
    sent: float = 0.0  # unix time the message was submitted
    delete: list[str] = field(default_factory=list)  # UIDs this run deletes when it ends


async def probe(config: MailDeliveryProbe, trace: Trace) -> str:
    """Submit a tagged message and wait until it is first seen in the mailbox."""
    run = _Run(config, trace, _key(config.mailbox))
    client: _IMAP | None = None
    seen = False
    try:
        trace.enter("mailbox")
        client = await _open_mailbox(config.mailbox, trace)
        await _sweep(client, run)

        trace.enter("submit")
        started = time.perf_counter()
        run.sent = time.time()
        run.token = new_token(run.sent)
        await _submit(config, run.token, trace)

        trace.enter("delivery")
        trace.checks["delivered"] = False  # until it is seen: what a cut-off run reports
        trace.deadline_means = ProbeFailed(
            Reason.NOT_DELIVERED, f"message accepted but not in {config.mailbox.folder} in time"
        )
        uid = await _wait(client, run.token)
        first_seen = time.perf_counter()
        trace.settle(first_seen)
        seen = True
        trace.checks["delivered"] = True
        trace.delivery = first_seen - started
        run.delete.append(uid)
        message = f"delivered in {trace.delivery:.3f}s"
        if config.dkim is not None:
            trace.enter("dkim")
            message += f", {await _verify(client, uid, config.dkim, trace)}"
            trace.settle()
        if trace.late:
            message += f"; {trace.late} late message{'s' if trace.late != 1 else ''} found"
        return message
    except OSError as err:  # say which side failed: the mailbox or the submission
        failure = network_failure(err, trace)
        if failure is None:
            raise
        raise ProbeFailed(failure.reason, f"{trace.phase}: {failure.message}") from None
    finally:
        if run.token and not seen:
            PENDING.add(run.key, run.token, run.sent)
        if client is not None:
            _clean_up(client, run.delete)


async def _open_mailbox(mailbox: Mailbox, trace: Trace) -> _IMAP:
    context = client_context(mailbox.tls)
    client = _IMAP(mailbox, context)
    try:
        await client.wait_hello_from_server()
        if mailbox.security == "starttls":
            await client.starttls()
        tls = client.tls_object()
        expiry = certificate_expiry(tls) if tls is not None else None
        if expiry is not None:
            trace.saw_certificate(expiry)
        password = reveal(mailbox.password) or ""
        response = await client.protocol.login(mailbox.username, password)
        if response.result != "OK":
            text = _text(response).replace(password, "***") if password else _text(response)
            raise ProbeFailed(Reason.MAILBOX, f"IMAP login refused: {response.result} {text}")
        _ok(await client.protocol.select(_quoted(mailbox.folder)), f"SELECT {mailbox.folder}")
    except BaseException:
        client.close_now()
        raise
    return client


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _sweep(client: _IMAP, run: _Run) -> None:
    """Sort the probe messages already in the mailbox: late ones are counted, and they, this
    process's leftovers and anyone's older than `cleanup_after` are deleted at the end."""
    uids = await _search(client, "HEADER", HEADER, "sla-")
    now = time.time()
    stale = now - run.config.cleanup_after
    PENDING.expire(run.key, stale)
    for uid, token in (await _tokens(client, uids)).items():
        match = _TOKEN.fullmatch(token)
        if match is None:
            continue
        sent = int(match[2]) / 1000
        if PENDING.take(run.key, token):
            run.trace.late += 1
            run.delete.append(uid)
        elif match[1] == INSTANCE or sent < stale:
            run.delete.append(uid)


async def _submit(config: MailDeliveryProbe, token: str, trace: Trace) -> None:
    submit = config.submit
    message = EmailMessage()
    message["From"] = submit.from_
    message["To"] = config.to
    message["Subject"] = f"SLA delivery probe {token}"
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid("sla-probe", domain=submit.from_.rsplit("@", 1)[1])
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: autoresponders must not answer
    message[HEADER] = token
    message.set_content("Delivery probe of the SLA exporter; it deletes this message itself.\n")
    password = reveal(submit.auth.password) or ""
    context = client_context(submit.tls)
    smtp = aiosmtplib.SMTP(
        hostname=submit.host,
        port=submit.effective_port,
        use_tls=submit.implicit_tls,
        start_tls=False,
        tls_context=context,
        local_hostname=submit.ehlo_name,
        timeout=3600,  # the probe's deadline ends a hung dialogue
    )
    try:
        await smtp.connect()
        await smtp.ehlo()
        if not submit.implicit_tls:
            if not smtp.supports_extension("starttls"):
                raise ProbeFailed(Reason.STARTTLS, "SMTP server does not offer STARTTLS")
            await smtp.starttls(server_hostname=submit.tls.server_name or submit.host)
            await smtp.ehlo()  # RFC 3207 4.2: what was said before TLS is forgotten
        tls = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
        expiry = certificate_expiry(tls) if tls is not None else None
        if expiry is not None:
            trace.saw_certificate(expiry)
        await _login(smtp, submit.auth.username, password)
        await smtp.send_message(message, sender=submit.from_, recipients=[config.to])
        await smtp.quit()
    except aiosmtplib.SMTPAuthenticationError as err:
        raise ProbeFailed(
            Reason.AUTH, f"submit: login refused: {_reply(err, password)}", err.code
        ) from None
    except aiosmtplib.SMTPRecipientsRefused as err:
        refused = err.recipients[0]
        raise ProbeFailed(
            Reason.SMTP_REPLY, f"submit refused: RCPT TO {_reply(refused, password)}", refused.code
        ) from None
    except aiosmtplib.SMTPResponseException as err:
        raise ProbeFailed(
            Reason.SMTP_REPLY, f"submit refused: {_reply(err, password)}", err.code
        ) from None
    except aiosmtplib.SMTPConnectError as err:
        cause = err.__cause__
        failure = network_failure(cause, trace) if cause is not None else None
        raise failure or ProbeFailed(Reason.CONNECT, "submit: cannot connect") from None
    except aiosmtplib.SMTPServerDisconnected:
        raise ProbeFailed(Reason.PROTOCOL, "submit: server closed the connection") from None
    except aiosmtplib.SMTPException as err:
        detail = bounded(_mask(str(err), password), SERVER_TEXT)
        raise ProbeFailed(Reason.PROTOCOL, f"submit: {detail}") from None
    finally:
        smtp.close()


async def _login(smtp: aiosmtplib.SMTP, username: str, password: str) -> None:
    """AUTH once, with the first mechanism offered of PLAIN, LOGIN, CRAM-MD5: a refused
    password is not tried again with the others (aiosmtplib's login() would)."""
    offered = [method.lower() for method in smtp.server_auth_methods]
    if "plain" in offered:
        await smtp.auth_plain(username, password)
    elif "login" in offered:
        await smtp.auth_login(username, password)
    elif "cram-md5" in offered:
        await smtp.auth_crammd5(username, password)
    else:
        shown = bounded(" ".join(offered) or "none", 60)
        raise ProbeFailed(Reason.AUTH, f"submit: no supported AUTH mechanism (offered: {shown})")


def _reply(err: aiosmtplib.SMTPResponseException, password: str) -> str:
    return f"{err.code} {bounded(_mask(err.message, password), SERVER_TEXT)}"


def _mask(text: str, password: str) -> str:
    return text.replace(password, "***") if password else text


async def _wait(client: _IMAP, token: str) -> str:
    """The UID of the message with `token`, as soon as it is in the folder."""
    idle = "IDLE" in client.protocol.capabilities
    while True:
        found = await _search(client, "HEADER", HEADER, token)
        if found:
            return found[0]
        if not idle:
            await asyncio.sleep(POLL)
            continue
        # IDLE until the server announces a change (or a while has passed), then look again.
        waiting = await client.idle_start(timeout=IDLE_RECHECK)
        with contextlib.suppress(TimeoutError):  # nothing new: look again anyway
            await client.wait_server_push(timeout=IDLE_RECHECK + 1)
        client.idle_done()
        await waiting


async def _verify(client: _IMAP, uid: str, wanted: DKIMSignature, trace: Trace) -> str:
    """Verify the delivered message's DKIM signature of the expected domain."""
    response = await client.protocol.uid("FETCH", uid, "(BODY.PEEK[])")
    _ok(response, "FETCH")
    literals = [bytes(line) for line in response.lines if isinstance(line, bytearray)]
    if not literals:
        raise ProbeFailed(Reason.MAILBOX, "the delivered message could not be read")
    raw = literals[0]
    signer = dkim.DKIM(raw)
    signatures = [
        i for i, (name, _) in enumerate(signer.headers) if name.lower() == b"dkim-signature"
    ]
    trace.checks["dkim_signature"] = False
    domains = []
    for index in range(len(signatures)):
        tags = _signature_tags(signer.headers[signatures[index]][1])
        domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
        domains.append(domain)
        if domain != wanted.domain:
            continue
        selector = tags.get(b"s", b"").decode("ascii", "replace")
        name = f"{selector}._domainkey.{domain}"
        answers = mail_domain.Answers(await mail_domain.make_resolver(wanted.nameservers))
        keys = await answers.texts(name)
        record = keys[0].encode() if keys else b""

        def lookup(_name: bytes, timeout: int = 5, record: bytes = record) -> bytes:
            return record

        if signer.verify(idx=index, dnsfunc=lookup):
            trace.checks["dkim_signature"] = True
            return f"DKIM signature of {domain} valid"
        raise ProbeFailed(Reason.DKIM, f"DKIM signature of {domain} does not verify")
    if not domains:
        raise ProbeFailed(Reason.DKIM, "delivered message has no DKIM signature")
    shown = bounded(", ".join(domains), 60)
    raise ProbeFailed(Reason.DKIM, f"no DKIM signature of {wanted.domain} (signed by {shown})")


def _signature_tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dict(dkim.util.parse_tag_value(value))
    except dkim.util.InvalidTagValueList:
        return {}


# --------------------------------------------------------------------------------------------
# Cleaning up after a run, apart from its deadline

_CLEANUPS: set[asyncio.Task[None]] = set()  # kept referenced until done


def _clean_up(client: _IMAP, uids: Iterable[str]) -> None:
    """Delete `uids` and log out in the background: the run's result does not wait for it,
    and what fails here is left for the next run's sweep."""
    task = asyncio.get_running_loop().create_task(_delete(client, list(uids)))
    _CLEANUPS.add(task)
    task.add_done_callback(_CLEANUPS.discard)


async def _delete(client: _IMAP, uids: list[str]) -> None:
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            if uids and client.protocol.state == "SELECTED":
                which = ",".join(uids)
                await client.protocol.uid("STORE", which, "+FLAGS.SILENT", r"(\Deleted)")
                if "UIDPLUS" in client.protocol.capabilities:
                    await client.protocol.uid("EXPUNGE", which)
                # Without UIDPLUS the messages stay flagged \Deleted for the server's own
                # expunge: a plain EXPUNGE would take others' deleted messages too.
            if client.protocol.state in ("AUTH", "SELECTED"):
                await client.protocol.logout()
    except Exception as err:  # best effort: the next run sweeps what is left
        logging.getLogger(__name__).debug("mailbox clean-up failed: %s", type(err).__name__)
    finally:
        client.close_now()


async def wait_for_cleanups() -> None:
    """Wait until every clean-up started so far has ended (tests, shutdown)."""
    while _CLEANUPS:
        await asyncio.gather(*list(_CLEANUPS), return_exceptions=True)


KIND = Kind("mail_delivery", MailDeliveryProbe, probe)
