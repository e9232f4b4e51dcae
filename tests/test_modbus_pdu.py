"""Frames and answer checks, pure: CRC against pymodbus's own implementation, every answer that
is not exactly the answer to its request rejected, and random bytes never crashing the parsers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer.rtu import FramerRTU

from drivers.modbus.pdu import (
    AnswerMismatch,
    ExceptionAnswer,
    FrameError,
    FunctionCode,
    check_answer,
    crc16,
    mbap_frame,
    read_request,
    rtu_frame,
    take_mbap,
    take_rtu,
    write_coils_request,
    write_register_request,
    write_registers_request,
)

READS = [
    FunctionCode.READ_COILS,
    FunctionCode.READ_DISCRETE_INPUTS,
    FunctionCode.READ_HOLDING_REGISTERS,
    FunctionCode.READ_INPUT_REGISTERS,
]


@given(st.binary(max_size=300))
def test_crc_matches_pymodbus(data: bytes):
    assert crc16(data) == FramerRTU.compute_CRC(data).to_bytes(2, "big")


def test_crc_of_a_known_frame():
    # Read holding registers 0..1 of unit 1: the classic example, CRC C4 0B.
    assert rtu_frame(1, bytes.fromhex("0300000002")) == bytes.fromhex("010300000002c40b")


@given(count=st.integers(1, 125), data=st.data())
def test_register_answer_round_trip(count: int, data: st.DataObject):
    request = read_request(FunctionCode.READ_HOLDING_REGISTERS, 0, count)
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    answer = bytes([3, 2 * count]) + struct.pack(f">{count}H", *registers)
    frame, used = take_rtu(rtu_frame(7, answer) + b"tail")
    assert frame is not None
    assert (frame.unit, used) == (7, len(answer) + 3)
    assert check_answer(request, frame.pdu) == answer[2:]


@pytest.mark.parametrize("code", READS)
def test_wrong_function_code_byte_count_or_length_is_rejected(code: FunctionCode):
    request = read_request(code, 10, 2)
    size = 1 if code in READS[:2] else 4
    good = bytes([code, size]) + bytes(size)
    assert check_answer(request, good) == bytes(size)
    other = READS[(READS.index(code) + 1) % 4]
    with pytest.raises(AnswerMismatch, match="function code"):
        check_answer(request, bytes([other]) + good[1:])
    with pytest.raises(AnswerMismatch, match="byte count"):
        check_answer(request, bytes([code, size + 2]) + bytes(size + 2))
    with pytest.raises(AnswerMismatch, match="bytes instead"):
        check_answer(request, good[:-1])
    with pytest.raises(ExceptionAnswer) as raised:
        check_answer(request, bytes([code | 0x80, 2]))
    assert raised.value.code == 2


def test_write_answers_must_echo():
    single = write_register_request(5, 0x1234)
    assert check_answer(single, single.pdu) == b""
    with pytest.raises(AnswerMismatch, match="echo"):
        check_answer(single, single.pdu[:-1] + b"\x35")
    many = write_registers_request(5, [1, 2, 3])
    assert check_answer(many, many.pdu[:5]) == b""
    coils = write_coils_request(0, [True, False, True])
    assert coils.pdu[-1] == 0b101
    with pytest.raises(AnswerMismatch):
        check_answer(coils, many.pdu[:5])


def test_crc_mismatch_and_foreign_mbap_are_frame_errors():
    frame = bytearray(rtu_frame(1, bytes([3, 2, 0, 42])))
    frame[-1] ^= 1
    with pytest.raises(FrameError, match="CRC"):
        take_rtu(frame)
    with pytest.raises(FrameError, match="protocol id"):
        take_mbap(b"\x00\x01\x00\x07\x00\x05\x01\x03\x02\x00\x2a")
    frame_mbap, used = take_mbap(mbap_frame(9, 1, bytes([3, 2, 0, 42])))
    assert frame_mbap is not None
    assert (frame_mbap.transaction_id, frame_mbap.unit, used) == (9, 1, 11)


@given(st.binary(max_size=600))
def test_random_bytes_never_crash_the_parsers(data: bytes):
    for take in (take_rtu, take_mbap):
        try:
            frame, used = take(data)
        except (FrameError, AnswerMismatch):
            continue
        assert 0 <= used <= len(data)
        assert (frame is None) == (used == 0)
