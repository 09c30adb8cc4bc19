"""The `--web.config.file`: TLS and basic auth for our endpoints, in the Prometheus format.

Same keys as the Prometheus exporter-toolkit's web configuration
(https://prometheus.io/docs/prometheus/latest/configuration/https/), so one file serves
Prometheus, its exporters and this one. Unknown keys are errors, as there.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from .loader import ConfigInvalid, load_model
from .values import ExistingFile, Model

log = logging.getLogger(__name__)


class TLSServerConfig(Model):
    cert_file: ExistingFile
    key_file: ExistingFile
    client_auth_type: Literal[
        "NoClientCert",
        "RequestClientCert",
        "RequireAnyClientCert",
        "VerifyClientCertIfGiven",
        "RequireAndVerifyClientCert",
    ] = "NoClientCert"
    client_ca_file: ExistingFile | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"


class HTTPServerConfig(Model):
    headers: dict[str, str] = {}


class WebConfig(Model):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    # user name -> bcrypt hash (`htpasswd -nBC 10 "" | tr -d ':\n'` makes one)
    basic_auth_users: dict[str, SecretStr] = {}


def load(path: str) -> WebConfig:
    """Read and validate a web config file; raise ConfigInvalid listing every error."""
    return load_model(path, WebConfig)


def server_context(config: WebConfig) -> ssl.SSLContext | None:
    """The server TLS context `config` describes, or None for plain HTTP."""
    tls = config.tls_server_config
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.minimum_version = {
        "TLS10": ssl.TLSVersion.TLSv1,
        "TLS11": ssl.TLSVersion.TLSv1_1,
        "TLS12": ssl.TLSVersion.TLSv1_2,
        "TLS13": ssl.TLSVersion.TLSv1_3,
    }[tls.min_version]
    if tls.client_ca_file:
        context.load_verify_locations(tls.client_ca_file)
    context.verify_mode = {
        "NoClientCert": ssl.CERT_NONE,
        "RequestClientCert": ssl.CERT_OPTIONAL,
        "RequireAnyClientCert": ssl.CERT_REQUIRED,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }[tls.client_auth_type]
    return context


def _fixed_at_start(config: WebConfig) -> object:
    """What a running exporter cannot change: whether it speaks TLS, and how, but for its
    certificate and key (OpenSSL takes only those from a context switched to mid-handshake)."""
    tls = config.tls_server_config
    return tls and (tls.client_auth_type, tls.client_ca_file, tls.min_version)


class WebConfigFile:
    """The web config file as it is now, read again when it or a file it names changes.

    The exporter-toolkit reads its file for every request, so a renewed certificate or a new
    password needs no restart; so here: basic auth users and headers apply from the next request,
    a new certificate and key from the next TLS handshake. Whether TLS is on, the client
    certificate settings and the minimum version stay as they were at start (a warning says so).
    A changed file that is invalid, or a certificate that does not load (a key not yet written
    beside it), is logged with its errors and the last good configuration kept.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._config = load(path)  # at start, errors are the caller's to report
        self._started = self._config
        self._context: ssl.SSLContext | None = None
        self._stamp = self._stamp_of(self._config)

    def _stamp_of(self, config: WebConfig) -> tuple[object, ...]:
        tls = config.tls_server_config
        files = [self.path] if tls is None else [self.path, tls.cert_file, tls.key_file]
        if tls is not None and tls.client_ca_file:
            files.append(tls.client_ca_file)
        # The contents, not modification times: two writes within one clock tick of the file
        # system, of the same size (a bcrypt hash for another), would look alike. The files are
        # small and read once a request, as the exporter-toolkit reads its file.
        stamp: list[bytes | None] = []
        for name in files:
            try:
                stamp.append(Path(name).read_bytes())
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def current(self) -> WebConfig:
        """The configuration to serve this request with, read again if a file changed."""
        stamp = self._stamp_of(self._config)
        if stamp != self._stamp:
            self._stamp = stamp  # a bad change is reported once, not at every request
            self._reload()
        return self._config

    def _reload(self) -> None:
        try:
            config = load(self.path)
            context = server_context(config)
        except ConfigInvalid as err:
            log.error("web config not reloaded, keeping the last good one:\n%s", err)
            return
        except (OSError, ssl.SSLError) as err:
            log.error(
                "web config not reloaded, keeping the last good one: %s: cannot load the "
                "certificate: %s",
                self.path,
                getattr(err, "reason", None) or err.strerror or err,
            )
            return
        if _fixed_at_start(config) != _fixed_at_start(self._started):
            log.warning(
                "web config %s: TLS on or off, client_auth_type, client_ca_file and "
                "min_version take effect at the next restart; the certificate, key, users and "
                "headers already apply",
                self.path,
            )
        self._config, self._context = config, context
        self._stamp = self._stamp_of(config)
        log.info("web config %s reloaded", self.path)

    def listening_context(self) -> ssl.SSLContext | None:
        """The TLS context to listen with (None: plain HTTP). Each handshake checks the file and
        presents the current certificate."""
        base = server_context(self._config)
        if base is None:
            return None

        def on_hello(tls: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
            try:
                self.current()
            except Exception:  # never fail a handshake over the check; the last good one serves
                log.exception("checking the web config file failed")
            if self._context is not None:
                tls.context = self._context  # its certificate and key; the rest stays base's

        base.sni_callback = on_hello  # OpenSSL calls it for every ClientHello, with SNI or not
        return base
