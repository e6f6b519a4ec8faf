from __future__ import annotations

import os

import pytest

from pushagent.names import local_file_name, printable


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


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("segment-1.csv", "segment-1.csv"),
        ("../../etc/passwd", "______etc_passwd"),
        ("..", "__"),
        (".", "_"),
        ("", "file"),
        (".hidden.csv", "_hidden.csv"),
        ("a/b\\c.csv", "a_b_c.csv"),
        ("new\nline\x1b[31m.csv", "new_line_[31m.csv"),
        ("right\u202eleft.csv", "right_left.csv"),
        ("clients été.csv", "clients été.csv"),
    ],
)
def test_names_from_outside_become_one_plain_file_name(name: str, local: str) -> None:
    made = local_file_name(name, taken=set())
    assert made == local
    assert "/" not in made and ".." not in made and made == printable(made)


def test_local_names_never_collide_and_fit() -> None:
    taken = {"job.json"}
    assert local_file_name("job.json", taken=taken) == "job-2.json"
    assert local_file_name("a/b.csv", taken=taken) == "a_b.csv"
    assert local_file_name("a_b.csv", taken=taken) == "a_b-2.csv"
    long = local_file_name("é" * 300 + ".csv", taken=taken, max_bytes=100)
    assert len(long.encode()) <= 100 and long.endswith(".csv")
    assert {"job-2.json", "a_b.csv", "a_b-2.csv", long} <= taken
