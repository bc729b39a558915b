"""The JSON telemetry payload a device publishes.

How it works: ``Telemetry`` is a frozen pydantic model (``extra="forbid"``);
``encode()`` gives compact UTF-8 JSON bytes and ``Telemetry.decode(data)`` parses
and validates them, raising ``PayloadError`` (never a pydantic or JSON error).

What it does not do: no clock and no randomness (the caller passes ``ts`` and
the readings), no topics, no I/O.

Example on the wire::

    {"device":"dev-0001","site":"plant-1","seq":7,"ts":1718000000.25,"readings":{"temp":21.5}}
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker.errors import EdgeMQError

__all__ = ["PayloadError", "Telemetry"]

_Reading = Annotated[float, Field(allow_inf_nan=False)]


class PayloadError(EdgeMQError, ValueError):
    """Bytes that are not a valid telemetry payload."""


class Telemetry(BaseModel):
    """One telemetry message of one device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(min_length=1, description="Device id, unique within its site (e.g. 'dev-0001').")
    site: str = Field(min_length=1, description="Site id the device belongs to.")
    seq: int = Field(ge=0, description="Per-device sequence number; (device, seq) identifies a message.")
    ts: float = Field(allow_inf_nan=False, description="Unix time (s) when the readings were taken.")
    readings: dict[str, _Reading] = Field(description="Named readings, finite floats.")

    def encode(self) -> bytes:
        """Compact UTF-8 JSON."""
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def decode(cls, data: bytes | str) -> Telemetry:
        """Parse and validate; ``PayloadError`` if ``data`` is not a telemetry payload."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(payload)"
            raise PayloadError(
                f"not a telemetry payload: {where}: {first['msg']}",
                hint="expected JSON with device, site, seq, ts, readings",
            ) from None
