"""Grafana for the SLA bundle: provisioning, the dashboards' JSON, and the generator writing it."""
