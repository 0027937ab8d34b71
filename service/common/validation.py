"""Input checks shared by the transport and the core; every failure names the offending field."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import InvalidArgument


def check_texts(
    texts: Sequence[str],
    field: str,
    max_count: int,
    max_characters: int,
    max_total_characters: int | None = None,
    allow_blank: bool = False,
) -> None:
    """A batch must be non-empty and within limits; blank texts are refused unless allow_blank."""
    if not texts:
        raise InvalidArgument(f"{field} is empty: send at least one text", field=field)
    if len(texts) > max_count:
        raise InvalidArgument(
            f"{field} has {len(texts)} texts, more than the limit of {max_count} per request; "
            "split the batch",
            field=field,
        )
    for position, text in enumerate(texts):
        if len(text) > max_characters:
            raise InvalidArgument(
                f"{field}[{position}] has {len(text)} characters, more than the limit of {max_characters}",
                field=f"{field}[{position}]",
            )
        if not allow_blank and not text.strip():
            raise InvalidArgument(
                f"{field}[{position}] is empty or only whitespace: there is nothing to embed",
                field=f"{field}[{position}]",
            )
    if max_total_characters is not None:
        total = sum(len(text) for text in texts)
        if total > max_total_characters:
            raise InvalidArgument(
                f"{field} has {total} characters in all, more than the limit of {max_total_characters} "
                "per request; split the batch",
                field=field,
            )


def check_unicode(value: str, field: str) -> None:
    """Refuses strings that cannot be stored as UTF-8 (lone surrogates, which JSON escapes can carry)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        surrogate = ord(error.object[error.start])
        raise InvalidArgument(
            f"{field} is not valid Unicode: it holds the lone surrogate U+{surrogate:04X}",
            field=field,
        ) from None
