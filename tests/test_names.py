from __future__ import annotations

import os

import pytest

from pushagent.names import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("45311.csv", "45311.csv"),
        ("clients été 日本.csv", "clients été 日本.csv"),
        ("a\nb.csv", "a\\nb.csv"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("next\x85line", "next\\x85line"),  # C1 NEL: a line break to some readers
        ("sep\u2028par\u2029", "sep\\u2028par\\u2029"),
        ("evil\u202egnp.csv", "evil\\u202egnp.csv"),
        ("back\\slash", "back\\slash"),
    ],
)
def test_control_characters_are_escaped_and_text_is_kept(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_an_undecodable_byte_shows_as_that_byte() -> None:
    name = os.fsdecode(b"caf\xe9-\xff.csv")  # Latin-1 bytes: lone surrogates once decoded
    assert printable(name) == "caf\\xe9-\\xff.csv"
    printable(name).encode("utf-8")  # safe to write to any UTF-8 sink


def test_the_result_is_one_line() -> None:
    every_char = "".join(chr(code) for code in range(0x3000))
    assert len(printable(every_char).splitlines()) == 1
