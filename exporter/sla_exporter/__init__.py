"""SLA exporter: probes the services an SLA promises and exposes exact counters for Prometheus."""

__version__ = "0.1.0"
