"""Hypothesis strategies shared by the parsers' property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Integers at and past the 64-bit edges: provider ids are 64-bit, the contract caps versions.
huge_ints = st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, -(10**30)])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def objects_with(
    keys: list[str], leaves: st.SearchStrategy[Any] = scalars, max_leaves: int = 30
) -> st.SearchStrategy[Any]:
    """JSON values whose objects are keyed by `keys`, the keys a parser reads, so that random
    documents get past its first checks."""
    known_keys = st.sampled_from(keys)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(known_keys, inner, max_size=6),
        max_leaves=max_leaves,
    )


def replacements(*specials: Any) -> st.SearchStrategy[Any]:
    """Values a mutation writes into a captured document: any JSON value, the 64-bit edges, long
    text, and the `specials` a transport's parser treats with care."""
    return (
        json_values
        | huge_ints
        | st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
        | st.sampled_from(specials)
    )
