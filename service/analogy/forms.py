"""Word forms by spelling: whether two words are variants of one stem (egypt, egyptian), for analogies."""

from __future__ import annotations

# Shortest shared beginning that makes two words variants of one stem: "man" and "manly" are,
# "spa" of spain and spanish is not enough once the shorter word is longer than four letters.
MIN_STEM_LETTERS = 3
# Letters two words must begin with alike for a relation between them to count as one of form.
FORM_RELATION_LETTERS = 2


def shared_prefix_length(first: str, second: str) -> int:
    length = 0
    for left, right in zip(first, second, strict=False):
        if left != right:
            break
        length += 1
    return length


def shares_stem(first: str, second: str) -> bool:
    """Whether two different spellings are variants of one stem: they share at least three first
    letters, and all but at most one letter of the shorter word (italy and italian, egypt and
    egyptian, big and bigger; not grandson and granddaughter, nor spain and spanish)."""
    shared = shared_prefix_length(first, second)
    return first != second and shared >= max(MIN_STEM_LETTERS, min(len(first), len(second)) - 1)


def begin_alike(first: str, second: str) -> bool:
    """Whether two words begin with the same two letters, so that a relation between them may be one
    of form (albania and albanian, sweden and swedish), which its answers then may share too."""
    return first[:FORM_RELATION_LETTERS] == second[:FORM_RELATION_LETTERS]
