"""The same probes described twice: an SLA file for our exporter, modules for blackbox_exporter.

Both verify the server certificate against the benchmark CA, both talk to 127.0.0.1 (no name to
resolve on either side), and the SMTP dialogue is the same on both: banner, EHLO, STARTTLS,
EHLO again, QUIT, each reply checked.
"""

from __future__ import annotations

from .targets import Addresses

KINDS = ("http", "https", "smtp")


def service_yaml(kind: str, index: int, interval: str, at: Addresses) -> str:
    """One service of our SLA file, on one line.

    A 60 s interval is the default and left out, so a service is as short as the format allows
    (three values: itself, `http`, `url`), like the files of 100,000 services users shard.
    """
    name = f"{kind}-{index:06d}"
    every = "" if interval == "60s" else f"interval: {interval}, "
    tls = f"tls: {{ca_file: '{at.ca_file}'}}"
    if kind == "http":
        probe = f"http: {{url: '{at.http}/s/{index}'}}"
    elif kind == "https":
        probe = f"http: {{url: '{at.https}/s/{index}', {tls}}}"
    elif kind == "delay":
        probe = f"http: {{url: '{at.delay}/s/{index}'}}"
    elif kind == "smtp":
        probe = (
            f"smtp: {{host: 127.0.0.1, port: {at.smtp_port}, starttls: required, "
            f"ehlo_name: prober.bench.test, {tls}}}"
        )
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return f"  {name}: {{{every}{probe}}}\n"


def sla_file(kind: str, count: int, interval: str, at: Addresses) -> str:
    """An SLA file of `count` services of one kind, all on the same interval."""
    head = f"sla: {{name: bench {kind} x{count}, timezone: UTC}}\nservices:\n"
    return head + "".join(service_yaml(kind, i, interval, at) for i in range(count))


def blackbox_file(at: Addresses) -> str:
    """blackbox_exporter modules doing what our three kinds of service do."""
    return f"""\
modules:
  http:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
  https:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      tls_config: {{ca_file: "{at.ca_file}"}}
  smtp:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      tls_config: {{ca_file: "{at.ca_file}"}}
      query_response:
        - expect: "^220 "
        - send: "EHLO prober.bench.test\\r"
        - expect: "^250-STARTTLS"
        - send: "STARTTLS\\r"
        - expect: "^220 "
        - starttls: true
        - send: "EHLO prober.bench.test\\r"
        - expect: "^250 "
        - send: "QUIT\\r"
        - expect: "^221 "
"""


def blackbox_target(kind: str, index: int, at: Addresses) -> tuple[str, str]:
    """(module, target) for blackbox's /probe, matching `service_yaml(kind, index, ...)`."""
    if kind == "http":
        return "http", f"{at.http}/s/{index}"
    if kind == "https":
        return "https", f"{at.https}/s/{index}"
    if kind == "delay":
        return "http", f"{at.delay}/s/{index}"
    if kind == "smtp":
        return "smtp", f"127.0.0.1:{at.smtp_port}"
    raise ValueError(f"unknown kind {kind!r}")
