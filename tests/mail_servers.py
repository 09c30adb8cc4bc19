"""A real mail system on loopback for the delivery tests: Postfix accepting submissions (STARTTLS,
SASL AUTH through Dovecot) and delivering over LMTP to Dovecot, read over IMAP.

Both come from Debian's packages (postfix, dovecot-imapd, dovecot-lmtpd; scripts/install.sh) and
run as this test's own instances: their own config directory, queue, mail store and unusual
loopback ports, nothing under /etc or the system's spool touched, so they run beside a system
Postfix or Dovecot and beside each other. Postfix has no unprivileged mode: its master must
start as root and drops to the `postfix` user for every daemon (as the system instance does), so
these fixtures need root (CI and `./test.sh` run as root on a fresh Debian machine). Dovecot runs
its own processes as the `dovecot` and `dovenull` users, and keeps the mail as `nobody`.

Postfix takes another config directory with `-c`; as root no `alternate_config_directories`
entry in /etc/postfix is needed. `start-fg` keeps its master in the foreground, so the fixture
owns the process and its children stop with it; `maillog_file` writes its log to a file (there
is no syslog in a container).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from helpers import free_port

DOMAIN = "mail.test"
SENDER = f"probe@{DOMAIN}"  # logs in to submit (SMTP AUTH)
INBOX = f"inbox@{DOMAIN}"  # the mailbox the probe reads (IMAP)
PASSWORD = "probe-s3cret"  # both accounts'; never to be seen in a metric, log or message
POSTFIX = "/usr/sbin/postfix"
DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"


def missing() -> str | None:
    """Why the mail system cannot run here, or None."""
    if os.geteuid() != 0:
        return "Postfix's master must start as root (run the tests as root, as CI does)"
    for path in (POSTFIX, DOVECOT, "/usr/lib/dovecot/lmtp", "/usr/lib/dovecot/imap"):
        if not os.path.exists(path):
            return f"{path} is missing: scripts/install.sh installs postfix and dovecot"
    return None


@dataclass
class MailSystem:
    """A running Postfix and Dovecot; ports on 127.0.0.1 and switches for the failure cases."""

    root: Path
    submission: int  # Postfix smtpd: STARTTLS, then AUTH (PLAIN, LOGIN) through Dovecot
    imap: int  # Dovecot IMAP: STARTTLS before LOGIN (plain-text login refused before it)
    imaps: int  # Dovecot IMAP over implicit TLS
    lmtp: int  # Dovecot LMTP, where Postfix delivers
    auth: int  # Dovecot's SASL service, which Postfix asks
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def postfix_dir(self) -> Path:
        return self.root / "postfix"

    @property
    def dovecot_conf(self) -> Path:
        return self.root / "dovecot" / "dovecot.conf"

    def postconf(self, *settings: str) -> None:
        """Change main.cf settings and have the running Postfix read them again."""
        subprocess.run(
            ["/usr/sbin/postconf", "-c", str(self.postfix_dir), "-e", *settings],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [POSTFIX, "-c", str(self.postfix_dir), "reload"], check=True, capture_output=True
        )

    def defer_delivery(self, deferred: bool) -> None:
        """Hold every message in Postfix's deferred queue (the LMTP transport paused), or not."""
        self.postconf(f"defer_transports = {'lmtp' if deferred else ''}")

    def flush(self) -> None:
        """Deliver the deferred queue now (`postqueue -f`), rather than at the next retry."""
        subprocess.run(
            [POSTFIX, "-c", str(self.postfix_dir), "flush"], check=True, capture_output=True
        )

    def queued(self) -> int:
        """Messages in Postfix's queues (incoming, active, deferred)."""
        out = subprocess.run(
            ["/usr/sbin/postqueue", "-c", str(self.postfix_dir), "-j"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return len([line for line in out.splitlines() if line.strip()])

    def hang_imap(self, hung: bool) -> None:
        """Stop Dovecot (SIGSTOP on its whole process group) or let it go on (SIGCONT).

        A stopped Dovecot still has its sockets: the kernel completes connections into the
        listen queue, and no greeting or answer ever comes, as with a server that hangs.
        """
        os.killpg(self.processes["dovecot"].pid, signal.SIGSTOP if hung else signal.SIGCONT)

    def messages(self, user: str = INBOX) -> list[str]:
        """The X-SLA-Probe header of every message in the user's INBOX, read with doveadm."""
        out = subprocess.run(
            [
                DOVEADM,
                "-c",
                str(self.dovecot_conf),
                "-f",
                "tab",
                "fetch",
                "-u",
                user,
                "hdr.x-sla-probe",
                "mailbox",
                "INBOX",
                "all",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return [line.strip() for line in out.splitlines()[1:]]

    def empty(self, user: str = INBOX) -> None:
        """Remove every message from the user's INBOX."""
        subprocess.run(
            [
                DOVEADM,
                "-c",
                str(self.dovecot_conf),
                "expunge",
                "-u",
                user,
                "mailbox",
                "INBOX",
                "all",
            ],
            check=True,
            capture_output=True,
        )

    def deliver(self, message: bytes, user: str = INBOX) -> None:
        """Put a message in the user's INBOX directly (not through Postfix)."""
        subprocess.run(
            [DOVEADM, "-c", str(self.dovecot_conf), "save", "-u", user, "-m", "INBOX"],
            input=message,
            check=True,
            capture_output=True,
        )

    def logs(self) -> str:
        parts = []
        for name in ("postfix/maillog", "dovecot/dovecot.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


@contextmanager
def mail_system(ca: trustme.CA) -> Iterator[MailSystem]:
    """Postfix and Dovecot in a directory of their own, ready when this yields; stopped, with
    their children, and the directory removed when it returns."""
    reason = missing()
    if reason is not None:
        raise AssertionError(reason)
    # Not under pytest's tmp_path: its folders are private to root, and the daemons' users
    # (postfix, dovecot, nobody) must walk through every folder above their files.
    root = Path(tempfile.mkdtemp(prefix="sla-mail-"))
    system = MailSystem(
        root=root,
        submission=free_port(),
        imap=free_port(),
        imaps=free_port(),
        lmtp=free_port(),
        auth=free_port(),
    )
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # the daemons' users walk through it
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(root / "cert.pem"), append=True)
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    os.chmod(root / "key.pem", 0o600)
    _dovecot_files(system)
    _postfix_files(system)
    try:
        system.processes["dovecot"] = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(system.dovecot_conf)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "dovecot" / "stderr.log").open("wb"),
            start_new_session=True,  # its own process group, for hang_imap and the stop
        )
        system.processes["postfix"] = subprocess.Popen(
            [POSTFIX, "-c", str(system.postfix_dir), "start-fg"],
            stdout=subprocess.DEVNULL,
            stderr=(root / "postfix" / "stderr.log").open("wb"),
            start_new_session=True,
        )
        _wait_listening(system, [system.submission, system.imap, system.imaps, system.lmtp])
        yield system
    finally:
        for name, process in system.processes.items():
            _stop(name, process, system.postfix_dir)
        shutil.rmtree(root, ignore_errors=True)


def _wait_listening(system: MailSystem, ports: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        for name, process in system.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited at start:\n{system.logs()}")
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=1):
                pending.pop(0)
                continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"mail system not listening on {pending}:\n{system.logs()}")
        time.sleep(0.1)


def _stop(name: str, process: subprocess.Popen[bytes], postfix_dir: Path) -> None:
    if process.poll() is not None:
        return
    if name == "postfix":
        # Postfix's master starts a session of its own (`master -s`): only `postfix stop`
        # (which signals it by its pid file) reaches it and, through it, its daemons.
        subprocess.run([POSTFIX, "-c", str(postfix_dir), "stop"], capture_output=True)
    try:
        os.killpg(process.pid, signal.SIGCONT)  # a hung (stopped) Dovecot cannot stop otherwise
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _dovecot_files(system: MailSystem) -> None:
    root = system.root
    home = root / "dovecot"
    for sub in ("run", "state", "mail"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    nobody = pwd.getpwnam("nobody")
    os.chown(home / "mail", nobody.pw_uid, nobody.pw_gid)
    # Dovecot's own base_dir holds its sockets; it sets their owners itself.
    (home / "users").write_text(
        "".join(f"{user}:{{PLAIN}}{PASSWORD}::::::\n" for user in (SENDER, INBOX))
    )
    os.chmod(home / "users", 0o644)
    (home / "dovecot.conf").write_text(
        f"""\
# A test instance: nothing from /etc/dovecot is read.
instance_name = sla-test-{system.imap}
protocols = imap lmtp
listen = 127.0.0.1
base_dir = {home}/run
state_dir = {home}/state
log_path = {home}/dovecot.log
default_login_user = dovenull
default_internal_user = dovecot
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
# LOGIN on the plain port only after STARTTLS, as on a real server.
disable_plaintext_auth = yes
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = {home}/users
}}
userdb {{
  driver = static
  args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={home}/mail/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 1
# New mail is announced to an IDLE client as it arrives (inotify), not every 30 s.
mailbox_idle_check_interval = 1 secs
# Dovecot slows every login from an address after a failed one (up to 15 s): the tests' refused
# logins would slow the tests after them, all from 127.0.0.1. Its documented switch-off.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {system.imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {system.imaps}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {system.lmtp}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
service auth {{
  inet_listener {{
    address = 127.0.0.1
    port = {system.auth}
  }}
}}
protocol lmtp {{
  # The recipient as Postfix gives it, domain included, is the user name.
  auth_username_format = %Lu
}}
"""
    )


MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{submission} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _postfix_files(system: MailSystem) -> None:
    config = system.postfix_dir
    config.mkdir(parents=True, exist_ok=True)
    spool = system.root / "spool"
    spool.mkdir(exist_ok=True)
    (system.root / "data").mkdir(exist_ok=True)
    shutil.chown(system.root / "data", "postfix")
    (config / "master.cf").write_text(MASTER_CF.format(submission=system.submission))
    (config / "main.cf").write_text(
        f"""\
# A test instance: its own queue and data, loopback only; nothing from /etc/postfix is read.
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {system.root}/data
maillog_file = {config}/maillog
maillog_file_prefixes = {system.root}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.{DOMAIN}
mydomain = {DOMAIN}
mydestination =
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
# The mailboxes live in Dovecot, reached over LMTP on loopback.
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_maps = inline:{{ {SENDER}=ok, {INBOX}=ok }}
virtual_transport = lmtp:inet:127.0.0.1:{system.lmtp}
# A deferred message is tried again soon after its first try (the delayed test flushes anyway).
minimal_backoff_time = 300s
queue_run_delay = 300s
# Submission: TLS first, then AUTH through Dovecot's SASL service; only logged-in senders relay.
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_cert_file = {system.root}/cert.pem
smtpd_tls_key_file = {system.root}/key.pem
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{system.auth}
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = reject_unlisted_recipient
smtpd_sender_restrictions = reject_unlisted_sender
"""
    )
