"""Reading text: the one line rule (``\\n`` only, CRLF, UTF-8 errors naming file:line), gzip
sniffed by content, line-aligned pairs of files, and the plain/TSV/JSONL pair readers."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.utils import smart_open

from seq2seq_attn.corpus import (
    MisalignedError,
    TextFileError,
    check_parallel_files,
    count_lines,
    decode_lines,
    gunzipped,
    header_columns,
    iter_lines,
    jsonl_pairs,
    line_count,
    plain_pairs,
    read_lines,
    read_parallel,
    tsv_pairs,
)

CASES = [
    (b"", []),
    (b"a\nb\n", ["a", "b"]),
    (b"a\nb", ["a", "b"]),  # no final line end
    (b"a\r\n\r\nb\r\n", ["a", "", "b"]),  # CRLF; the blank line stays
    (b"\n\n", ["", ""]),
    (b"a\rb\r\n", ["a\rb"]),  # a lone \r is no line break
    (b"a\r\r\nb\r", ["a", "b"]),  # every \r before the line end goes, also on the last line
    (
        b"x\xe2\x80\xa8y\x0bz\x0c\n",
        ["x\u2028y\x0bz\x0c"],
    ),  # nor are the breaks str.splitlines knows
    (b" a \t\n", [" a \t"]),  # other whitespace stays
    ("Mäuse \u00e9t\u00e9\n".encode(), ["Mäuse été"]),
]


@pytest.mark.parametrize(("data", "lines"), CASES)
def test_lines_split_as_sacrebleu_splits_a_file(tmp_path, data, lines):
    assert decode_lines(data, "x") == lines
    path = tmp_path / "text.txt"
    path.write_bytes(data)
    with smart_open(str(path)) as handle:  # sacreBLEU's own reader (it splits on \n only)
        assert [line.rstrip("\n").rstrip("\r") for line in handle] == lines
    assert read_lines(path) == lines
    assert [line for _, line in iter_lines(path)] == lines
    assert count_lines(path) == line_count(data) == len(lines)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\xc3\xa4", b"\r", b"\n", b"\xe9", b"\xc3", b" "])))
def test_reading_a_file_as_it_goes_and_at_once_agree(tmp_path_factory, pieces):
    """Same lines, or the same error, whether the text is streamed line by line or decoded at
    once (the corpus readers do the first, the CLI's stdin the second)."""
    data = b"".join(pieces)
    path = tmp_path_factory.mktemp("agree") / "text.txt"
    path.write_bytes(data)
    try:
        expected = decode_lines(data, str(path))
    except TextFileError as error:
        with pytest.raises(TextFileError) as streamed:
            list(iter_lines(path))
        assert str(streamed.value) == str(error)
        with pytest.raises(TextFileError) as whole:
            read_lines(path)
        assert str(whole.value) == str(error)
        return
    assert [line for _, line in iter_lines(path)] == expected
    assert [number for number, _ in iter_lines(path)] == list(range(1, len(expected) + 1))
    assert count_lines(path) == len(expected)


def test_bad_text_names_the_file_and_line(tmp_path):
    with pytest.raises(TextFileError, match=r"^in\.txt:3: not valid UTF-8"):
        decode_lines(b"ok\nok\ncaf\xe9\n", "in.txt")
    with pytest.raises(TextFileError, match=r"absent\.txt: cannot read"):
        read_lines(tmp_path / "absent.txt")


def test_invalid_utf8_names_the_line_the_byte_and_the_bytes_around_it(tmp_path):
    path = tmp_path / "train.de"
    path.write_bytes(b"ein Hund\nzwei Katzen\r\ndrei M\xe4use\r\nvier\n")
    with pytest.raises(TextFileError) as error:
        read_lines(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3: not valid UTF-8 (invalid continuation byte)")
    assert "at byte 6 of the line (b'drei M\\xe4use\\r')" in message  # not the next line's bytes
    assert "iconv -f LATIN1 -t UTF-8" in message
    with pytest.raises(TextFileError, match=r"train\.de:3: not valid UTF-8"):
        list(plain_pairs(str(path), str(path)))


def test_gzip_is_recognised_by_content_not_by_name(tmp_path):
    text = b"eins\r\nzwei\n"
    (tmp_path / "packed.de").write_bytes(gzip.compress(text))  # gzipped, no .gz
    (tmp_path / "plain.de.gz").write_bytes(text)  # a .gz name, plain text
    for name in ("packed.de", "plain.de.gz"):
        assert read_lines(tmp_path / name) == ["eins", "zwei"]
        assert [line for _, line in iter_lines(tmp_path / name)] == ["eins", "zwei"]
        assert count_lines(tmp_path / name) == 2
    assert gunzipped(gzip.compress(text)) == gunzipped(text) == text


def test_a_damaged_gzip_file_names_the_file(tmp_path):
    path = tmp_path / "train.de.gz"
    packed = gzip.compress("".join(f"{n}\n" for n in range(5000)).encode())
    path.write_bytes(packed[: len(packed) // 2])  # cut short
    with pytest.raises(TextFileError, match=r"train\.de\.gz: cannot read"):
        read_lines(path)
    with pytest.raises(TextFileError, match=r"train\.de\.gz: cannot read"):
        list(iter_lines(path))
    with pytest.raises(TextFileError, match=r"train\.de\.gz: cannot read"):
        count_lines(path)


def test_misaligned_files_name_both_files_and_their_counts(tmp_path):
    src, tgt = tmp_path / "val.de", tmp_path / "val.en"
    src.write_bytes(b"a\nb\nc")  # three lines, the last without a line end
    tgt.write_bytes(gzip.compress(b"x\ny\nz\n"))
    assert read_parallel(src, tgt) == (["a", "b", "c"], ["x", "y", "z"])
    assert check_parallel_files(src, tgt) == 3
    assert list(plain_pairs(str(src), str(tgt)))[2] == {"src": "c", "tgt": "z"}
    tgt.write_bytes(b"x\n\n")
    expected = rf"^{src} has 3 lines but {tgt} has 2$"
    with pytest.raises(MisalignedError, match=expected):
        read_parallel(src, tgt)
    with pytest.raises(MisalignedError, match=expected):
        check_parallel_files(src, tgt)
    assert issubclass(MisalignedError, TextFileError)


def test_tsv_pairs_by_column_name(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("id\tde\ten\n1\tein Hund\ta dog\r\n2\t\tempty\n", encoding="utf-8")
    assert list(tsv_pairs(str(path), "de", "en")) == [
        {"src": "ein Hund", "tgt": "a dog"},
        {"src": "", "tgt": "empty"},
    ]
    assert next(tsv_pairs(str(path), "en", "id")) == {"src": "a dog", "tgt": "1"}
    assert header_columns(path, "tsv") == ["id", "de", "en"]
    path.write_text("id\tde\ten\n1\tein\tHund\ta dog\n", encoding="utf-8")
    with pytest.raises(TextFileError, match=r"pairs\.tsv:2: 4 tab-separated fields.*has 3"):
        list(tsv_pairs(str(path), "de", "en"))


def test_jsonl_pairs_by_column_name(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"de": "ein Hund", "en": "a dog"}, {"de": "zwei", "en": 2, "n": 1}]
    path.write_text("\n" + "\n\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    assert list(jsonl_pairs(str(path), "de", "en")) == [
        {"src": "ein Hund", "tgt": "a dog"},
        {"src": "zwei", "tgt": "2"},
    ]
    assert header_columns(path, "jsonl") == ["de", "en"]  # the first non-blank row
    path.write_text('{"de": "a", "en": "b"}\n["de", "en"]\n', encoding="utf-8")
    with pytest.raises(TextFileError, match=r"pairs\.jsonl:2: no column 'de'; the row has list"):
        list(jsonl_pairs(str(path), "de", "en"))
    path.write_text('{"de": "a", "en": "b"}\n{"de": "a"\n', encoding="utf-8")
    with pytest.raises(TextFileError, match=r"pairs\.jsonl:2: invalid JSON"):
        list(jsonl_pairs(str(path), "de", "en"))


def test_header_columns_of_an_empty_or_broken_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    assert header_columns(path, "jsonl") is None
    assert header_columns(path, "tsv") is None
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(TextFileError, match=r"pairs\.jsonl: invalid JSON on the first row"):
        header_columns(path, "jsonl")
    path.write_text('"just a string"\n', encoding="utf-8")
    assert header_columns(path, "jsonl") == []
