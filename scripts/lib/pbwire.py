"""Protobuf wire encoding by hand, for messages the fleet's own tools refuse
to make (a WriteCommand whose record breaks the schema, as a producer that
skips validation would send). Field numbers: proto/catalyst/v1/."""


def pb_varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_field(number, value):
    """A varint field for an int, else a length-delimited one (str or bytes)."""
    if isinstance(value, int):
        return pb_varint(number << 3) + pb_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return pb_varint(number << 3 | 2) + pb_varint(len(data)) + data


def news_upsert_command(command_id, news_id, symbol, version):
    """A WriteCommand (meta, op UPSERT, record.news_raw) with nothing but the
    news_raw row's id, symbol and version, whatever their lengths."""
    row = pb_field(1, news_id) + pb_field(2, symbol) + pb_field(15, version)
    meta = pb_field(1, command_id) + pb_field(2, version)
    return pb_field(1, meta) + pb_field(2, 1) + pb_field(3, pb_field(1, row))
