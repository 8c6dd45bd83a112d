"""For tests of the bulk metrics calls: the ways a sequence of rows can arrive in pieces."""

from __future__ import annotations

import itertools

from hypothesis import strategies as st


@st.composite
def pieces(draw: st.DrawFn, n: int) -> list[tuple[int, int]]:
    """``range(n)`` cut at drawn points into consecutive (start, stop) pieces, empty ones too."""
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    return list(itertools.pairwise([0, *cuts, n]))
