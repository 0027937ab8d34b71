"""The wire form of a message whose only field is `repeated float values = 1` (vecserve.v1.Vector):
protobuf packs such floats into one length-delimited field, their little-endian bytes as they are,
so client and server can move vectors in and out of messages without a Python float per value."""


def packed_floats_header(count: int) -> bytes:
    """Field 1's tag (length-delimited) and the varint byte length of `count` packed floats."""
    length = 4 * count
    header = bytearray(b"\x0a")
    while length > 0x7F:
        header.append(length & 0x7F | 0x80)
        length >>= 7
    header.append(length)
    return bytes(header)
