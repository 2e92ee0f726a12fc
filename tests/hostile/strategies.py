"""Hypothesis strategies shared by the hostile property tests."""

from __future__ import annotations

from hypothesis import strategies as st

atoms = st.sampled_from(["ALL", "SEEN", "UNSEEN", "FLAGGED", "OR", "NOT", "FROM", "TO", "SUBJECT", "TEXT",
                         "SINCE", "BEFORE", "ON", "LARGER", "SMALLER", "UID", "HEADER", "KEYWORD", "BODY",
                         "1-Jan-2025", "2025-01-01", "1:*", "5", "(", ")", '"', "\\", "{5}", "~{5+}", "*",
                         "\r\n", "\0", "Müller", "\"a b\"", "X1 DELETE INBOX"])


queries = st.lists(atoms | st.text(max_size=8), max_size=12).map(" ".join) | st.text(max_size=80)
