"""The request-size limit's refusal, worded once for every transport."""

from __future__ import annotations

from service.errors import TooLarge


def oversized_request(size: int, limit: int) -> TooLarge:
    return TooLarge(
        f"the request message has {size:,} bytes, more than the limit of {limit:,} bytes "
        "per message: split it into smaller requests (fewer texts, documents or queries per call, "
        "or more messages in a stream), or raise the server's --max-message-bytes"
    )
