"""The wire form of a repeated float field (vecserve.v1.Vector's values, Document's vector): protobuf
packs such floats into one length-delimited field, their little-endian bytes as they are, so client
and server can move vectors in and out of messages without a Python float per value."""


def packed_floats_header(count: int, field_number: int = 1) -> bytes:
    """The field's tag (length-delimited; field numbers below 16 take one byte) and the varint byte
    length of `count` packed floats."""
    if not 0 < field_number < 16:
        raise ValueError(f"field number {field_number} does not fit a one-byte tag")
    length = 4 * count
    header = bytearray([field_number << 3 | 2])
    while length > 0x7F:
        header.append(length & 0x7F | 0x80)
        length >>= 7
    header.append(length)
    return bytes(header)
