"""ClickHouse's RowBinary, the wire of the job's outputs only ClickHouse reads (`Output.wire`): each
field in its ClickHouse type, numbers little-endian in their width, a String as its byte length
(LEB128) and bytes, a DateTime as 4 bytes of seconds. The job writes it in Java (jvm/:
`RowBinaryEncoder`); this is the same format for Python: a record made by hand (tests, tools) or read
back from a topic."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from pipelines.store.tables import Field

NUMBERS = {"UInt64": struct.Struct("<Q"), "Int64": struct.Struct("<q"), "UInt32": struct.Struct("<I"),
           "Int32": struct.Struct("<i"), "UInt16": struct.Struct("<H"), "Int16": struct.Struct("<h"),
           "UInt8": struct.Struct("<B"), "Int8": struct.Struct("<b"), "Float64": struct.Struct("<d"),
           "DateTime": struct.Struct("<I")}


def encode(fields: Iterable[Field], values: Mapping[str, object]) -> bytes:
    """One record: `values` by field name (a DateTime as whole seconds since the epoch)."""
    out = bytearray()
    for field in fields:
        value = values[field.name]
        if field.clickhouse == "String":
            data = value.encode() if isinstance(value, str) else bytes(value)
            size = len(data)
            while size >= 0x80:
                out.append(size & 0x7F | 0x80)
                size >>= 7
            out.append(size)
            out += data
        else:
            out += NUMBERS[field.clickhouse].pack(value)
    return bytes(out)


def decode(fields: Iterable[Field], data: bytes) -> dict[str, object]:
    """One record back into values by field name (a String as bytes, a DateTime as seconds)."""
    values, at = {}, 0
    for field in fields:
        if field.clickhouse == "String":
            size, shift = 0, 0
            while True:
                byte = data[at]
                at += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            values[field.name] = data[at:at + size]
            at += size
        else:
            number = NUMBERS[field.clickhouse]
            (values[field.name],) = number.unpack_from(data, at)
            at += number.size
    if at != len(data):
        raise ValueError(f"a RowBinary record of {len(data)} bytes holds {at} bytes of its fields")
    return values
