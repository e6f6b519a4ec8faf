"""The list answer read one element at a time: the same values as json.loads, however the
text is cut into chunks."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from pushagent.exchange.jsonstream import JsonArrayStream

DOCUMENT = json.dumps([
    {"jobId": 1, "name": 'a "quoted" ] name', "nested": {"x": [1, 2, {"y": None}]}},
    12345678901234567890,
    1.5,
    "text, with ] and [",
    True,
    None,
    [],
    {},
], indent=1)


def cut(text: str, sizes: list[int]) -> list[str]:
    chunks, position = [], 0
    for size in sizes:
        chunks.append(text[position:position + size])
        position += size
    return [*chunks, text[position:]]


def elements(chunks: list[str]) -> list[object]:
    stream = JsonArrayStream(chunks)
    assert stream.opens_array()
    return list(stream)


def test_one_character_chunks_give_what_json_loads_gives() -> None:
    assert elements(list(DOCUMENT)) == json.loads(DOCUMENT, parse_float=Decimal)


@pytest.mark.parametrize("seed", range(20))
def test_random_cuts_give_what_json_loads_gives(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.randint(0, 9) for _ in range(len(DOCUMENT) // 3)]

    assert elements(cut(DOCUMENT, sizes)) == json.loads(DOCUMENT, parse_float=Decimal)


def test_a_number_cut_at_a_chunk_end_is_read_whole() -> None:
    assert elements(["[12", "34", "5, 6", "7]"]) == [12345, 67]


@pytest.mark.parametrize("text", ["", "   ", "[]", " [ ] "])
def test_empty_answers(text: str) -> None:
    stream = JsonArrayStream([text])
    assert list(stream) == [] if stream.opens_array() else stream.whole() is None


def test_a_bare_object_is_read_whole() -> None:
    stream = JsonArrayStream(['{"jobId":', ' 4}'])

    assert not stream.opens_array()
    assert stream.whole() == {"jobId": 4}


@pytest.mark.parametrize("text", ["[1, 2", "[1 2]", "[1,]", "[{]", "[1,", "<html>"])
def test_invalid_json_raises_value_error(text: str) -> None:
    stream = JsonArrayStream(list(text))
    with pytest.raises(ValueError):
        if stream.opens_array():
            list(stream)
        else:
            stream.whole()


def test_head_keeps_the_start_for_the_error_message() -> None:
    stream = JsonArrayStream(["<html>", "x" * 5000])

    assert not stream.opens_array()
    with pytest.raises(ValueError):
        stream.whole()
    assert stream.head.startswith("<html>xxx")
    assert len(stream.head) == 2000
