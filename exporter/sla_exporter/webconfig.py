"""The `--web.config.file`: TLS and basic auth for our endpoints, in the Prometheus format.

Same keys as the Prometheus exporter-toolkit's web configuration
(https://prometheus.io/docs/prometheus/latest/configuration/https/), so one file serves
Prometheus, its exporters and this one. Unknown keys are errors, as there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from .config import ExistingFile, Model, load_model


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
