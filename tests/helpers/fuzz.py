"""Hypothesis settings and JSON values as an attacker writes them, for the fuzz tests.

Examples are few and derandomized, with no example database, so CI runs the same cases every
time.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz(examples: int, suppress: Sequence[HealthCheck] = ()) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(suppress),
    )


#: Text as an attacker writes it: any code point, lone surrogates included (JSON's \u
#: escapes and YAML's "\u" escapes can spell them).
plain = st.text(max_size=12)
text = plain | st.tuples(plain, st.characters(categories=["Cs"]), plain).map("".join)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
