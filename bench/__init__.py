"""Benchmarks of the SLA exporter against blackbox_exporter, and at scale: `python -m bench`."""
