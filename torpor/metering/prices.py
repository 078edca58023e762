"""The price table: unit prices per second of each resource, in an active and an idle flavour.

Seed 000 bills a provisioned GPU instance in idle mode at two unit prices, one for idle GPUs and one
for active GPUs; seed 001 prices GPU memory per GB-second (``3,600 × 4 × 0.000018 = 0.259``) and compares
with an always-on GPU server at about USD 2 an hour. The defaults are those published numbers, so a bill
on a fresh install reads like Function Compute's examples:

==========================  ==========  ===========================================================
field                       default     where it comes from
==========================  ==========  ===========================================================
``gpu_active_per_gb_s``     0.000018    seed 001 ("3,600 × 4 × 0.000018"); Function Compute's active
                                        Tesla GPU price per GB-second before its August 2024 CU pricing
``gpu_idle_per_gb_s``       0.000007    Function Compute's idle GPU price (announced 14 June 2024, same
                                        price sheet); seed 000 says idle is cheaper but gives no number
``cpu_per_vcpu_s``          0.00002     Function Compute CU table: active vCPU 1 CU/vCPU-s × USD 0.00002/CU
``cpu_idle_per_vcpu_s``     0           same table: idle vCPU 0 CU; a frozen torpor instance uses no CPU
``memory_per_gb_s``         0.000003    same table: memory 0.15 CU/GB-s × USD 0.00002/CU
``memory_idle_per_gb_s``    0.000003    memory is held while frozen (weights sit in pinned host memory)
``always_on_gpu_per_hour``  2           seed 001: an ECS instance with the same T4 GPU, "USD 2/hour"
==========================  ==========  ===========================================================

They are reference prices for a self-hosted install to replace with its own: set them in the server
config file's ``prices:`` section. A GB is 1024 MB throughout metering.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from torpor.errors import SpecError
from torpor.safe_yaml import read_config_mapping

PRICES_SECTION = "prices"
MB_PER_GB = 1024

Price = Decimal  # money per unit, in the table's currency; exact so that bills add up to the cent


class PriceTable(BaseModel):
    """Unit prices in ``currency``. Active = starting, ready, busy or draining; idle = frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_active_per_gb_s: Price = Field(default=Decimal("0.000018"), ge=0)
    gpu_idle_per_gb_s: Price = Field(default=Decimal("0.000007"), ge=0)
    cpu_per_vcpu_s: Price = Field(default=Decimal("0.00002"), ge=0)
    cpu_idle_per_vcpu_s: Price = Field(default=Decimal("0"), ge=0)
    memory_per_gb_s: Price = Field(default=Decimal("0.000003"), ge=0)
    memory_idle_per_gb_s: Price = Field(default=Decimal("0.000003"), ge=0)
    rounding: Literal["second", "minute"] = "second"
    """``minute``: each instance's active and idle seconds in a bill are rounded up to whole minutes,
    as CoreWeave bills per minute; ``second`` bills the exact seconds (seed 001's per-second billing)."""
    always_on_gpu_per_hour: Price = Field(default=Decimal("2"), ge=0)
    """What one dedicated GPU server costs an hour: the comparison line on every bill (seed 001)."""
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")


def format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``"field: message"`` line per problem, ``prefix`` naming the section the fields sit in."""
    lines = []
    for err in exc.errors():
        field = prefix + ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{field}: unknown field")
        else:
            lines.append(f"{field}: {err['msg'].removeprefix('Value error, ')}")
    return lines


def parse_prices(data: Any, *, source: str = "prices") -> PriceTable:
    """Validate an already parsed ``prices:`` mapping; errors name ``prices.<field>``."""
    if data is None:
        return PriceTable()
    if not isinstance(data, dict):
        raise SpecError(source, [f"{PRICES_SECTION}: must be a mapping of fields"])
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc, prefix=f"{PRICES_SECTION}.")) from None


def load_prices(path: Path | None) -> PriceTable:
    """The price table from the server config file's ``prices:`` section; defaults when there is none.

    Other top-level sections belong to other parts of the server and are left alone here. Every
    problem is a :class:`~torpor.errors.SpecError` naming the file and the field.
    """
    if path is None:
        return PriceTable()
    raw = read_config_mapping(path)
    return parse_prices(raw.get(PRICES_SECTION), source=str(path))
