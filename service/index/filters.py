"""Metadata filters (Condition, NumericRange) checked and compiled to a query of the metadata table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import InvalidArgument
from service.index.model import MAX_METADATA_KEY_CHARACTERS, MetadataScalar, check_metadata_value

MAX_FILTER_CONDITIONS = 64
MAX_FILTER_VALUES = 1024


@dataclass(frozen=True)
class NumericRange:
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class Condition:
    """One test on one metadata key: exactly one of equals, any_of or range. Missing keys fail."""

    key: str
    equals: MetadataScalar | None = None
    any_of: Sequence[MetadataScalar] | None = None
    range: NumericRange | None = None


def typed_value(value: MetadataScalar) -> tuple[str, str | float | int]:
    """The (kind, value) pair a metadata value is stored and compared as: a string "1", the number 1
    and true are three different values."""
    if isinstance(value, bool):
        return "b", int(value)
    if isinstance(value, str):
        return "s", value
    return "n", float(value)


def filter_query(conditions: Sequence[Condition]) -> tuple[str, list[object]]:
    """A query for the FAISS ids of documents passing every condition (INTERSECT of one per test)."""
    if len(conditions) > MAX_FILTER_CONDITIONS:
        raise InvalidArgument(
            f"the filter has {len(conditions)} conditions, more than {MAX_FILTER_CONDITIONS}", field="filter"
        )
    parts: list[str] = []
    parameters: list[object] = []
    for position, condition in enumerate(conditions):
        where = f"filter.conditions[{position}]"
        if not condition.key or len(condition.key) > MAX_METADATA_KEY_CHARACTERS:
            raise InvalidArgument(
                f"{where}.key must have 1 to {MAX_METADATA_KEY_CHARACTERS} characters", field=f"{where}.key"
            )
        tests = [condition.equals is not None, condition.any_of is not None, condition.range is not None]
        if sum(tests) != 1:
            raise InvalidArgument(f"{where} needs exactly one of equals, any_of or range", field=where)
        select = "SELECT faiss_id FROM metadata WHERE key = ? AND "
        if condition.equals is not None:
            kind, value = typed_value(check_metadata_value(condition.equals, f"{where}.equals"))
            parts.append(select + "kind = ? AND value = ?")
            parameters += [condition.key, kind, value]
        elif condition.any_of is not None:
            values = list(condition.any_of)
            if not values or len(values) > MAX_FILTER_VALUES:
                raise InvalidArgument(
                    f"{where}.any_of needs 1 to {MAX_FILTER_VALUES} values, got {len(values)}",
                    field=f"{where}.any_of",
                )
            by_kind: dict[str, list[object]] = {}
            for value_position, value in enumerate(values):
                kind, stored = typed_value(
                    check_metadata_value(value, f"{where}.any_of.values[{value_position}]")
                )
                by_kind.setdefault(kind, []).append(stored)
            alternatives = []
            parameters.append(condition.key)
            for kind, kind_values in by_kind.items():
                alternatives.append(f"(kind = ? AND value IN ({', '.join('?' * len(kind_values))}))")
                parameters += [kind, *kind_values]
            parts.append(select + "(" + " OR ".join(alternatives) + ")")
        else:
            assert condition.range is not None
            bounds = {
                ">": condition.range.gt,
                ">=": condition.range.gte,
                "<": condition.range.lt,
                "<=": condition.range.lte,
            }
            given = {operator: bound for operator, bound in bounds.items() if bound is not None}
            if not given:
                raise InvalidArgument(f"{where}.range needs at least one bound", field=f"{where}.range")
            if not all(math.isfinite(bound) for bound in given.values()):
                raise InvalidArgument(f"{where}.range bounds must be finite", field=f"{where}.range")
            parts.append(select + "kind = 'n' AND " + " AND ".join(f"value {op} ?" for op in given))
            parameters += [condition.key, *(float(bound) for bound in given.values())]
    return " INTERSECT ".join(parts), parameters
