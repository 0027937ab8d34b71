"""Limits shared by every operation that takes a k: searches, analogies and nearest words."""

from __future__ import annotations

from service.errors import InvalidArgument

DEFAULT_K = 10
MAX_K = 1000


def check_k(k: int, field_name: str = "k") -> int:
    """k as asked: 0 means the default of 10; otherwise 1 to 1000."""
    if k == 0:
        return DEFAULT_K
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(
            f"{field_name} must be between 1 and {MAX_K} (0 for {DEFAULT_K}), got {k}", field_name
        )
    return k
