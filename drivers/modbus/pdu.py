"""Modbus frames and PDUs as bytes: build requests, frame them (MBAP for TCP, RTU with CRC), and
check every answer against the request it answers. Pure: no I/O and no pymodbus, so every rule
below is tested against bytes computed independently.

pymodbus's client takes an answer with another function code, and a transaction id 0 for
whatever is waiting; the checks here are why fieldgate does not: an answer is a value only if
its unit id, function code, byte count and length are those of the request.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

#: The largest register count one read request may ask for (Modbus application protocol, 6.3).
MAX_READ_REGISTERS = 125
#: ... and bit count (6.1, 6.2).
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968
#: An RTU frame is at most 256 bytes: unit, 253 bytes of PDU, CRC.
MAX_RTU_FRAME = 256
_EXCEPTION_FLAG = 0x80


class FunctionCode(IntEnum):
    READ_COILS = 1
    READ_DISCRETE_INPUTS = 2
    READ_HOLDING_REGISTERS = 3
    READ_INPUT_REGISTERS = 4
    WRITE_SINGLE_COIL = 5
    WRITE_SINGLE_REGISTER = 6
    WRITE_MULTIPLE_COILS = 15
    WRITE_MULTIPLE_REGISTERS = 16


BIT_READS = frozenset({FunctionCode.READ_COILS, FunctionCode.READ_DISCRETE_INPUTS})
REGISTER_READS = frozenset({FunctionCode.READ_HOLDING_REGISTERS, FunctionCode.READ_INPUT_REGISTERS})


class AnswerMismatch(ValueError):
    """The answer is well framed but is not an answer to the request (wrong function code,
    byte count or length). A protocol error for that request, never a value."""


class ExceptionAnswer(Exception):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception {code}")


@dataclass(frozen=True, slots=True)
class Request:
    """One request PDU (function code first) and what its answer must look like."""

    function_code: FunctionCode
    pdu: bytes
    #: Registers or bits asked for (reads) or written (writes).
    count: int

    @property
    def address(self) -> int:
        return int.from_bytes(self.pdu[1:3], "big")


def read_request(function_code: FunctionCode, address: int, count: int) -> Request:
    limit = MAX_READ_BITS if function_code in BIT_READS else MAX_READ_REGISTERS
    if function_code not in BIT_READS | REGISTER_READS:
        raise ValueError(f"{function_code!r} is not a read")
    if not 1 <= count <= limit or address < 0 or address + count > 65536:
        raise ValueError(f"cannot read {count} from {address} with {function_code.name}")
    return Request(function_code, struct.pack(">BHH", function_code, address, count), count)


def write_coil_request(address: int, value: bool) -> Request:
    return Request(
        FunctionCode.WRITE_SINGLE_COIL,
        struct.pack(">BHH", FunctionCode.WRITE_SINGLE_COIL, address, 0xFF00 if value else 0),
        1,
    )


def write_register_request(address: int, value: int) -> Request:
    return Request(
        FunctionCode.WRITE_SINGLE_REGISTER,
        struct.pack(">BHH", FunctionCode.WRITE_SINGLE_REGISTER, address, value),
        1,
    )


def write_coils_request(address: int, values: Sequence[bool]) -> Request:
    if not 1 <= len(values) <= MAX_WRITE_BITS:
        raise ValueError(f"cannot write {len(values)} coils in one request")
    packed = bytearray((len(values) + 7) // 8)
    for index, value in enumerate(values):
        if value:
            packed[index // 8] |= 1 << (index % 8)
    head = struct.pack(
        ">BHHB", FunctionCode.WRITE_MULTIPLE_COILS, address, len(values), len(packed)
    )
    return Request(FunctionCode.WRITE_MULTIPLE_COILS, head + bytes(packed), len(values))


def write_registers_request(address: int, values: Sequence[int]) -> Request:
    if not 1 <= len(values) <= MAX_WRITE_REGISTERS:
        raise ValueError(f"cannot write {len(values)} registers in one request")
    head = struct.pack(
        ">BHHB", FunctionCode.WRITE_MULTIPLE_REGISTERS, address, len(values), 2 * len(values)
    )
    body = struct.pack(f">{len(values)}H", *values)
    return Request(FunctionCode.WRITE_MULTIPLE_REGISTERS, head + body, len(values))


def answer_length(pdu_start: bytes) -> int | None:
    """Length of the answer PDU whose first bytes are ``pdu_start``, as its function code
    defines it; ``None`` when more bytes are needed. Raises :class:`AnswerMismatch` for a
    function code no answer to our requests has (RTU cannot be resynchronised past it)."""
    if not pdu_start:
        return None
    code = pdu_start[0]
    if code & _EXCEPTION_FLAG:
        return 2
    if code in BIT_READS | REGISTER_READS:
        return None if len(pdu_start) < 2 else 2 + pdu_start[1]
    if code in {5, 6, 15, 16}:
        return 5
    raise AnswerMismatch(f"function code {code} is not an answer to any request fieldgate sends")


def check_answer(request: Request, answer: bytes) -> bytes:
    """The data of ``answer`` (without function code and byte count) if it answers
    ``request``; raises :class:`ExceptionAnswer` or :class:`AnswerMismatch` otherwise."""
    if not answer:
        raise AnswerMismatch("empty answer")
    code = answer[0]
    if code == request.function_code | _EXCEPTION_FLAG:
        if len(answer) != 2:
            raise AnswerMismatch(f"exception answer of {len(answer)} bytes instead of 2")
        raise ExceptionAnswer(answer[1])
    if code != request.function_code:
        raise AnswerMismatch(
            f"answer has function code {code} instead of {int(request.function_code)}"
        )
    if request.function_code in BIT_READS | REGISTER_READS:
        expected = (
            (request.count + 7) // 8 if request.function_code in BIT_READS else 2 * request.count
        )
        if len(answer) < 2 or answer[1] != expected:
            got = answer[1] if len(answer) >= 2 else "no"
            raise AnswerMismatch(f"answer has byte count {got} instead of {expected}")
        if len(answer) != 2 + expected:
            raise AnswerMismatch(f"answer is {len(answer)} bytes instead of {2 + expected}")
        return answer[2:]
    # Writes: FC 5/6 echo the request; FC 15/16 echo its address and count.
    echo = request.pdu if code in {5, 6} else request.pdu[:5]
    if answer != echo:
        raise AnswerMismatch("write answer does not echo the request")
    return b""


def registers_of(data: bytes) -> list[int]:
    return list(struct.unpack(f">{len(data) // 2}H", data))


def bits_of(data: bytes, count: int) -> list[bool]:
    return [bool(data[i // 8] >> (i % 8) & 1) for i in range(count)]


# -- framing ------------------------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> bytes:
    """The Modbus RTU CRC of ``data``, as sent on the wire (low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc.to_bytes(2, "little")


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body)


#: The MBAP header: transaction id, protocol id (0), length of what follows, unit id.
_MBAP_HEADER = struct.Struct(">HHHB")


def mbap_frame(transaction_id: int, unit: int, pdu: bytes) -> bytes:
    return _MBAP_HEADER.pack(transaction_id, 0, len(pdu) + 1, unit) + pdu


class FrameError(ValueError):
    """Bytes that are no frame: a CRC that does not match, an MBAP header with a foreign
    protocol id or an impossible length. What follows them cannot be trusted either."""


@dataclass(frozen=True, slots=True)
class Frame:
    unit: int
    pdu: bytes
    #: MBAP transaction id; ``None`` for RTU, which has none.
    transaction_id: int | None = None


def take_mbap(buffer: bytes | bytearray) -> tuple[Frame | None, int]:
    """The first MBAP frame in ``buffer`` and the bytes it used, or ``(None, 0)`` if it is
    incomplete. Raises :class:`FrameError` for a header that cannot start a frame."""
    if len(buffer) < 7:
        return None, 0
    transaction_id, protocol, length, unit = _MBAP_HEADER.unpack_from(buffer)
    if protocol != 0:
        raise FrameError(f"MBAP protocol id {protocol} instead of 0")
    if not 2 <= length <= 254:
        raise FrameError(f"MBAP length {length} is outside 2..254")
    end = 6 + length
    if len(buffer) < end:
        return None, 0
    return Frame(unit, bytes(buffer[7:end]), transaction_id), end


def take_rtu(buffer: bytes | bytearray) -> tuple[Frame | None, int]:
    """The first RTU answer frame in ``buffer`` and the bytes it used, or ``(None, 0)`` if it
    is incomplete. Raises :class:`FrameError` for a CRC mismatch, :class:`AnswerMismatch` for a
    function code whose frame length cannot be known."""
    if len(buffer) < 2:
        return None, 0
    length = answer_length(bytes(buffer[1:3]))
    if length is None:
        return None, 0
    end = 1 + length + 2
    if len(buffer) < end:
        return None, 0
    body, crc = bytes(buffer[: end - 2]), bytes(buffer[end - 2 : end])
    if crc16(body) != crc:
        raise FrameError("CRC does not match")
    return Frame(body[0], body[1:]), end
