"""Placeholder for the http probe kind (being written)."""

from __future__ import annotations

from typing import Any

from .base import ProbeFailed, Trace, network_failure


async def probe(config: Any, trace: Trace) -> str:
    raise NotImplementedError


def classify(exc: BaseException, trace: Trace) -> ProbeFailed | None:
    return network_failure(exc, trace)
