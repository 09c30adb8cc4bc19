"""What every probe kind shares: the result value, failure reasons, phase timing and the runner."""

from __future__ import annotations

import asyncio
import enum
import errno
import functools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

from cryptography import x509
from pydantic import BaseModel

log = logging.getLogger(__name__)

MAX_MESSAGE = 200  # characters of a failure message kept; a server's garbage must not grow memory


class Reason(enum.StrEnum):
    """Why a probe failed: a small closed set, used as the `reason` label on failure counters."""

    TIMEOUT = "timeout"  # the probe's deadline passed; the message names the phase it was in
    DNS = "dns"  # the host name did not resolve (or not to the IP family required)
    CONNECT = "connect"  # TCP connect refused, reset or unreachable (the proxy's too)
    TLS = "tls"  # handshake failed, certificate invalid, expired or for another host
    PROTOCOL = "protocol"  # the server spoke something that is not the protocol (garbage, reset)
    HTTP_STATUS = "http_status"  # an HTTP status outside the expected list
    BODY_MISMATCH = "body_mismatch"  # body substring, regex, JSON fields or coding not as expected
    BODY_TOO_LARGE = "body_too_large"  # body longer than max_body_bytes
    SMTP_REPLY = "smtp_reply"  # an SMTP reply code other than the one the dialogue needs
    STARTTLS = "starttls"  # STARTTLS required but not offered by the server
    AUTH = "auth"  # login refused (SMTP AUTH, HTTP 401/403 on an authenticated API, proxy 407)
    GATEWAY_ERROR = "gateway_error"  # the SMS gateway reported an error in its payload
    RATE_LIMITED = "rate_limited"  # HTTP 429: the probe was throttled, the service is not healthy
    # Mail delivery (mail_delivery): the message was accepted but not seen in the mailbox in time;
    # the mailbox could not be read (IMAP login refused, folder missing, an IMAP error reply).
    NOT_DELIVERED = "not_delivered"
    MAILBOX = "mailbox"
    # Sender authentication (mail_domain, and mail_delivery's signature check): the record a
    # receiver checks is missing, invalid or not as expected.
    MX = "mx"
    SPF = "spf"
    DKIM = "dkim"
    DMARC = "dmarc"
    INTERNAL = "internal"  # a bug in the exporter; logged with its traceback
    # The exporter itself could not run the probe (out of file descriptors or memory, say): the
    # service is not to blame, so the month accounting leaves the slot unknown, not down.
    EXPORTER = "exporter"


# Failures of the exporter, not of the service: the month accounting does not count them as down.
EXPORTER_FAULTS = frozenset({Reason.INTERNAL, Reason.EXPORTER})


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe run; immutable, so readers never see a half-written result."""

    success: bool
    duration: float  # seconds, start to end of the whole probe
    reason: Reason | None = None  # None exactly when success
    message: str = ""  # one human line: what was checked or what went wrong
    phases: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    tls_expiry: float | None = None  # unix time of the earliest notAfter seen in the chain
    status_code: int | None = None  # last HTTP status or SMTP reply code
    timestamp: float = 0.0  # unix time at which the probe started
    # What some kinds find besides success: each check's outcome (mail_domain: mx, spf, ...),
    # the end-to-end time of a message delivered in time, probe messages found that arrived
    # after their probe gave up, and whether every DNS answer was DNSSEC-validated (AD).
    checks: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}))
    delivery: float | None = None
    late: int = 0
    dnssec: bool | None = None

    def __post_init__(self) -> None:
        if self.success != (self.reason is None):
            raise ValueError("a result has a reason exactly when it failed")


class ProbeFailed(Exception):
    """Raised inside a probe to end it with a reason; the runner turns it into a result."""

    def __init__(self, reason: Reason, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status_code = status_code


class Trace:
    """Phase timings and facts a probe collects as it goes; read even when it is cut off."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.phases: dict[str, float] = {}
        self.phase: str = "start"
        self._phase_start = clock()
        self.tls_expiry: float | None = None
        self.status_code: int | None = None
        self.began: float | None = None  # when the first phase (dns or connect) began
        self.settled: float | None = None  # when the last answer arrived, if it has
        self.checks: dict[str, bool] = {}
        self.delivery: float | None = None
        self.late = 0
        self.dnssec: bool | None = None
        # What running out of time in the current phase means, if more than "timeout" (a
        # message not delivered while the probe waits for it); forgotten at the next phase.
        self.deadline_means: ProbeFailed | None = None

    def enter(self, phase: str) -> None:
        """End the current phase (adding its time) and start `phase`."""
        now = self._clock()
        self._add(now)
        if self.began is None:
            self.began = now
        self.phase = phase
        self._phase_start = now
        self.settled = None
        self.deadline_means = None

    def settle(self, at: float | None = None) -> None:
        """The last byte of the probe's last answer arrived (now, or `at`): its clock stops.

        Called where the byte is received, so the time the event loop takes to get back to the
        probe (other probes' answers, checks, bookkeeping) is not counted as the service's.
        Entering a phase afterwards (another step) starts the clock again.
        """
        now = self._clock() if at is None else at
        self._add(now)
        self._phase_start = now
        self.settled = now

    def _add(self, now: float) -> None:
        if self.phase != "start" and self.settled is None:
            self.phases[self.phase] = self.phases.get(self.phase, 0.0) + now - self._phase_start

    def finish(self) -> None:
        self.enter("done")

    def saw_certificate(self, not_after: float) -> None:
        if self.tls_expiry is None or not_after < self.tls_expiry:
            self.tls_expiry = not_after


C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True)
class Kind(Generic[C]):
    """A probe kind: the key a service sets in the SLA file, the model of that section, and the
    prober that checks the target the section describes.

    The prober records what happens in its `trace` and returns a one-line success message, or
    raises ProbeFailed for an expected failure; the runner classifies anything else it raises
    (`network_failure`). It must open fresh connections on every call.
    """

    name: str
    config: type[C]
    probe: Callable[[C, Trace], Awaitable[str]]


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """One printable line of at most `limit` characters from text a server may have sent."""
    if text.isprintable():  # the usual case, without a look at each character
        line = text.strip()
    else:
        line = "".join(c if c.isprintable() else " " for c in text).strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


async def run_probe(
    prober: Callable[[C, Trace], Awaitable[str]],
    config: C,
    timeout: float,
    wall_clock: Callable[[], float] = time.time,
) -> ProbeResult:
    """Run one probe under its timeout; every outcome, including a bug, becomes a ProbeResult."""
    trace = Trace()
    started_wall = wall_clock()
    started = time.perf_counter()
    deadline = asyncio.timeout(timeout)
    failure: ProbeFailed | None = None
    message = ""
    try:
        async with deadline:
            message = await prober(config, trace)
    except TimeoutError as exc:
        # Only our own deadline is "timeout"; a library's TimeoutError (subclasses included)
        # is classified like any other error so its real cause is kept.
        timed_out = ProbeFailed(
            Reason.TIMEOUT, f"timed out after {timeout:g}s during {trace.phase}"
        )
        if deadline.expired():
            failure = trace.deadline_means or timed_out
        else:
            failure = network_failure(exc, trace) or timed_out
    except ProbeFailed as exc:
        failure = exc
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # every failure must end as a result, never kill the scheduler
        failure = network_failure(exc, trace)
        if failure is None:
            log.exception("probe raised an unexpected error during %s", trace.phase)
            failure = ProbeFailed(Reason.INTERNAL, f"{type(exc).__name__} during {trace.phase}")
    if failure is not None:
        message = failure.message
        if failure.status_code is not None:
            trace.status_code = failure.status_code
    phase = trace.phase
    # From the first byte the probe sent (its preparation is the exporter's time, not the
    # service's) to the last one it received, or to now when it did not get that far.
    ended = trace.settled if trace.settled is not None else time.perf_counter()
    began = trace.began if trace.began is not None else started
    trace.finish()
    if failure is not None and phase not in ("start", "done"):
        trace.phases.setdefault(phase, 0.0)
    return ProbeResult(
        success=failure is None,
        duration=ended - began,
        reason=None if failure is None else failure.reason,
        message=bounded(message),
        phases=MappingProxyType(dict(trace.phases)),
        tls_expiry=trace.tls_expiry,
        status_code=trace.status_code,
        timestamp=started_wall,
        checks=MappingProxyType(dict(trace.checks)),
        delivery=trace.delivery,
        late=trace.late,
        dnssec=trace.dnssec,
    )


# errno values that say the exporter ran out of something (file descriptors, memory, buffers),
# not that the service failed: the probe is then the exporter's fault (Reason.EXPORTER).
EXPORTER_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def exporter_fault(exc: BaseException, trace: Trace) -> ProbeFailed | None:
    """A failure of the exporter's own resources, whatever phase it happened in."""
    if isinstance(exc, MemoryError):
        return ProbeFailed(Reason.EXPORTER, f"exporter out of memory during {trace.phase}")
    if isinstance(exc, OSError) and exc.errno in EXPORTER_ERRNOS:
        what = exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
        return ProbeFailed(Reason.EXPORTER, f"exporter fault during {trace.phase}: {what}")
    return None


def network_failure(exc: BaseException, trace: Trace) -> ProbeFailed | None:
    """Classify socket-level errors shared by every probe kind (DNS, connect, TLS, resets)."""
    own = exporter_fault(exc, trace)
    if own is not None:
        return own
    if isinstance(exc, socket.gaierror):
        return ProbeFailed(Reason.DNS, f"cannot resolve host: {exc.strerror or exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ProbeFailed(Reason.TLS, f"certificate rejected: {exc.verify_message or exc.reason}")
    if isinstance(exc, ssl.SSLError):
        return ProbeFailed(Reason.TLS, f"TLS failed: {exc.reason or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeFailed(Reason.CONNECT, "connection refused")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        reason = Reason.CONNECT if trace.phase == "connect" else Reason.PROTOCOL
        return ProbeFailed(reason, f"connection reset by peer during {trace.phase}")
    if isinstance(exc, OSError):
        reason = Reason.CONNECT if trace.phase in ("start", "dns", "connect") else Reason.PROTOCOL
        return ProbeFailed(reason, f"{exc.strerror or type(exc).__name__} during {trace.phase}")
    return None


def certificate_expiry(tls: ssl.SSLObject | ssl.SSLSocket) -> float | None:
    """The peer's leaf certificate notAfter as unix time, also when verification is off.

    With verification off Python's dict form of the certificate is empty, so the DER form is
    parsed with `cryptography` (what trustme and most TLS tooling in Python build on).
    """
    der = tls.getpeercert(binary_form=True)
    if not der:
        return None
    return _not_after(der)


# A service presents the same certificate probe after probe: parsed once, not on every
# handshake (bench/RESULTS.md). The key is the whole certificate, so a new one is parsed anew.
@functools.lru_cache(maxsize=1024)
def _not_after(der: bytes) -> float | None:
    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
    except ValueError:  # a certificate cryptography cannot parse: no expiry, not a failure
        return None
