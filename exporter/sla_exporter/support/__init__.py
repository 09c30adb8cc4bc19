"""Support: ticket clocks in business hours, measured against the SLA's response targets.

- config.py: the SLA file's `support:` section (calendars, policies, ingestion).
- business_time.py: opening hours minus holidays, and clocks that run in them.
- events.py: ticket events (model, validation, JSON); store.py: their SQLite file and worker
  thread; replay.py: a ticket's events replayed into clocks.
- desk.py: the support desk (policies matched to tickets, month tallies); collector.py: its
  `sla_support_*` metrics; web.py: the event endpoint; importer.py: `sla-support-import`.
"""
