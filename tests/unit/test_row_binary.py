"""ClickHouse's RowBinary in Python (pipelines/store/row_binary.py), the wire of the outputs only
ClickHouse reads: the bytes ClickHouse's documentation gives for each type, and a round trip."""

from __future__ import annotations

import pytest

from pipelines.store import row_binary
from pipelines.store.tables import EVENTS_VALID, POST_SURFACE_MINUTE_ROWS, _fields


def test_each_type_is_written_as_clickhouse_reads_it():
    fields = _fields("s STRING String", "u BIGINT UInt64", "b TINYINT UInt8", "t TIMESTAMP(3) DateTime",
                     "i INT Int32", "f DOUBLE Float64")
    data = row_binary.encode(fields, {"s": "é" * 100, "u": 2**64 - 1, "b": 1, "t": 1723424400, "i": -2, "f": 0.5})
    assert data == (bytes([200, 1]) + "é".encode() * 100  # 200 bytes: LEB128 0xC8 0x01
                    + b"\xff" * 8 + b"\x01" + (1723424400).to_bytes(4, "little") + b"\xfe\xff\xff\xff"
                    + bytes.fromhex("000000000000e03f"))


@pytest.mark.parametrize("output", [EVENTS_VALID, POST_SURFACE_MINUTE_ROWS])
def test_a_record_of_each_binary_output_decodes_to_what_was_encoded(output):
    assert output.wire == "RowBinary"
    values = {f.name: (f"{f.name}-x" if f.clickhouse == "String" else 7) for f in output.fields}
    decoded = row_binary.decode(output.fields, row_binary.encode(output.fields, values))
    assert decoded == {k: (v.encode() if isinstance(v, str) else v) for k, v in values.items()}


def test_a_record_with_bytes_left_over_is_refused():
    fields = _fields("u BIGINT UInt64")
    with pytest.raises(ValueError, match="holds 8 bytes"):
        row_binary.decode(fields, row_binary.encode(fields, {"u": 1}) + b"\x00")
