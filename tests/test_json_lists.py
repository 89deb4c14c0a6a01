"""The JSON lists users hand over are read item by item (iter_json_list), and must accept and refuse exactly
what json.loads does: the reference here is json.loads itself, never the reader."""

import json

import pytest

from mullama.data.jsonfile import iter_json_list, read_json_list
from mullama.data.musicqa import QAPair, iter_musicqa, write_musicqa
from mullama.errors import MullamaError

TEXTS = ["[]", " [ ] ", "[1]", '[1,2, {"a": [1,2]}]', '\n[\n {"x": "y"} ,\n "s"\n]\n', '[ "a\\u00e9" ]',
         "[true, null, 1.5e3, NaN]", "[1]\n\n", "[1,]", "[1 2]", "[1,2", "[", "", "{}", '"a"', "[1]]", "[1] x",
         "[,1]", "[1,,2]", "nul", "\ufeff[1]", '[{"a": 1} {"b": 2}]']


def json_loads_verdict(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return "not valid JSON"
    return value if isinstance(value, list) else "expected a JSON list"


@pytest.mark.parametrize("text", TEXTS)
def test_a_list_is_read_item_by_item_as_json_loads_reads_it(text, tmp_path):
    path = tmp_path / "list.json"
    path.write_text(text, encoding="utf-8")
    expected = json_loads_verdict(text)
    if isinstance(expected, list):
        assert json.dumps(read_json_list(path, "test file")) == json.dumps(expected)  # NaN != NaN
    else:
        with pytest.raises(MullamaError, match=expected) as refused:
            read_json_list(path, "test file")
        assert str(path) in str(refused.value) and "\n" not in str(refused.value)


def test_items_before_a_mistake_are_read_and_the_mistake_still_refused(tmp_path):
    """A truncated file: the reader yields what it could read, then refuses, so a caller that plans before it
    writes (export-shards) fails before any output."""
    path = tmp_path / "truncated.json"
    path.write_text('[{"a": 1}, {"b": 2}, {"c"')
    items = iter_json_list(path, "test file")
    assert next(items) == {"a": 1} and next(items) == {"b": 2}
    with pytest.raises(MullamaError, match="truncated.json is not valid JSON"):
        next(items)


def test_musicqa_pairs_stream_in_file_order(tmp_path):
    pairs = [QAPair(f"clip{n}", f"q{n}", f"a{n}") for n in range(5)]
    write_musicqa(tmp_path / "qa.json", pairs)
    assert list(iter_musicqa(tmp_path / "qa.json")) == pairs
