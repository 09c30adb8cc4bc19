"""Secret values loaded from `!env` and `!file` tags; they never render as their value."""

from __future__ import annotations

from pydantic import SecretStr

__all__ = ["SecretStr", "reveal"]


def reveal(value: str | SecretStr | None) -> str | None:
    """Return the plain text of a config value that may be a secret, for use on the wire only."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value
