"""The installed cilbench version, recorded in every result (no import of the rest of cilbench)."""

from __future__ import annotations

__version__ = "0.1.0"
