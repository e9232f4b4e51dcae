"""Request planning: read a device's points in as few requests as its register layout allows.

Points in the same register table are sorted by address and merged into one request when the
registers between them are no more than the device's ``max_gap``, none of them is one the meter
refused (``avoid``), and the request stays within the protocol's limit of 125 registers (or the
meter's). Pure, so the planner's guarantees are tested without a meter.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from drivers.modbus.settings import (
    BIT_TABLES,
    MAX_REGISTERS_PER_READ,
    ModbusPointSettings,
    RegisterType,
)

#: The largest bit count one read of coils or discrete inputs may ask for.
MAX_BITS_PER_READ = 2000


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read of ``count`` registers from ``address`` in one table, and the points it covers."""

    register_type: RegisterType
    address: int
    count: int
    points: tuple[ModbusPointSettings, ...]

    def registers_of(self, point: ModbusPointSettings, registers: Sequence[int]) -> Sequence[int]:
        """The slice of this request's answer that holds ``point``."""
        start = point.address - self.address
        return registers[start : start + point.register_count]


def plan_requests(
    points: Sequence[ModbusPointSettings],
    max_gap: int = 0,
    max_registers: int = MAX_REGISTERS_PER_READ,
    avoid: Collection[tuple[RegisterType, int]] = (),
) -> list[ReadRequest]:
    """The fewest requests, under the gap and size limits, that cover every point once.
    ``max_registers`` limits register tables; bit tables take up to 2000 bits a request.
    ``avoid``: (table, address) of registers the meter refused; no request reads across one."""
    requests: list[ReadRequest] = []
    for register_type in RegisterType:
        limit = MAX_BITS_PER_READ if register_type in BIT_TABLES else max_registers
        in_table = sorted(
            (p for p in points if p.register_type is register_type),
            key=lambda p: (p.address, p.register_count),
        )
        group: list[ModbusPointSettings] = []
        start = end = 0  # the group covers registers [start, end)
        for point in in_table:
            point_end = point.address + point.register_count
            fits = (
                group
                and point.address - end <= max_gap
                and max(end, point_end) - start <= limit
                and not any((register_type, a) in avoid for a in range(end, point.address))
            )
            if fits:
                group.append(point)
                end = max(end, point_end)
                continue
            if group:
                requests.append(ReadRequest(register_type, start, end - start, tuple(group)))
            group, start, end = [point], point.address, point_end
        if group:
            requests.append(ReadRequest(register_type, start, end - start, tuple(group)))
    return requests
