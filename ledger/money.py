"""Money as integer pico-dollars (1e-12 USD): exact for every per-token price, summed exactly by
SQLite and PostgreSQL; never floats."""

from __future__ import annotations

from decimal import Decimal

PICO = Decimal(10) ** 12


def to_picousd(usd: Decimal) -> int:
    """USD to integer pico-dollars, rounding half-up below one pico-dollar."""
    return int((usd * PICO).to_integral_value(rounding="ROUND_HALF_UP"))


def from_picousd(pico: int) -> Decimal:
    return Decimal(pico) / PICO
