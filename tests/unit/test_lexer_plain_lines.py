"""The lexer's shortcut for plain lines makes the tokens its general path makes.

A line of an instruction that takes plain words (``SERVICE web``), on one physical
line with no quote, escape or comment, is lexed by a shortcut (``lexer._plain_line``).
The same line ending in ``\\`` before the end of the file is one instruction with the
same text, but it takes the general path (continuations); every token of the two must
agree in type, value and position.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from amic.amifile.lexer import tokenize

KEYWORDS = ["SERVICE", "service", "Requires", "PACKAGES", "ENABLE", "FROM", "SECRET", "NAME",
            "INCLUDE", "ENV", "COPY", "INIT", "LABEL"]
WORDS = st.text(st.characters(blacklist_characters=" \t\n\r\\'\"#", min_codepoint=0x21),
                min_size=1, max_size=12)
BLANKS = st.text(st.sampled_from(" \t"), min_size=1, max_size=3)


def described(text: str) -> list[tuple]:
    return [(t.type, str(t), t.start_pos, t.line, t.column, t.end_line, t.end_column)
            for t in tokenize(text)]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(KEYWORDS), st.lists(st.tuples(BLANKS, WORDS), max_size=5),
       st.text(st.sampled_from(" \t"), max_size=2), st.integers(0, 2))
def test_a_plain_line_lexes_as_the_general_path_does(keyword, words, indent, blank_lines):
    line = indent + keyword + "".join(blank + word for blank, word in words)
    before = "\n" * blank_lines   # later lines: the line number counts
    assert described(before + line + "\n") == described(before + line + "\\\n")


def test_the_shortcut_positions_every_word():
    assert described("\n  SERVICE\tweb  x-1\n") == [
        ("SERVICE", "SERVICE", 0, 2, 3, 2, 10),
        ("WORD", "web", 8, 2, 11, 2, 14),
        ("WORD", "x-1", 13, 2, 16, 2, 19),
        ("_NL", "\n", None, 2, 19, 2, 19),
    ]
