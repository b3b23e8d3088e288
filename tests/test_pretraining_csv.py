"""The course-lab CSV <-> Hugging Face rows: the checked reader (one clear line per bad cell) and the writer."""

from __future__ import annotations

import csv
import io
import random
from itertools import chain

import pytest

from minibert_hf.errors import MiniBertInputError
from minibert_hf.pretraining_csv import encode_rows, load_pretraining_csv, longest_row, write_pretraining_csv

LAB_CSV = (
    "Original Text,BERT Input,BERT Label,Segment Label,Is Next\n"
    # A = 3 tokens padded to B's length: [PAD]s between A's [SEP] and B, and after B
    '"the cat sat [SEP] it was warm and sunny","[1, 10, 3, 12, 2, 0, 0, 20, 21, 3, 23, 2, 0, 0]",'
    '"[0, 0, 11, 0, 0, 0, 0, 0, 0, 22, 0, 0, 0, 0]","1,1,1,1,1,0,0,2,2,2,2,2,0,0",1\n'
    '"a b [SEP] c d","[1, 30, 31, 2, 40, 3, 2]","[0, 0, 0, 0, 0, 41, 0]","1,1,1,1,2,2,2",0\n'
)


def test_course_lab_csv_with_inner_padding_is_converted(tmp_path):
    path = tmp_path / "lab.csv"
    path.write_text(LAB_CSV, encoding="utf-8")
    dataset = load_pretraining_csv(path, vocab_size=50)
    first, second = dataset[0], dataset[1]
    assert first["input_ids"] == [1, 10, 3, 12, 2, 20, 21, 3, 23, 2]
    assert first["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert first["labels"] == [-100, -100, 11, -100, -100, -100, -100, 22, -100, -100]
    assert first["next_sentence_label"] == 0  # Is Next 1 -> HF label 0
    assert second["input_ids"] == [1, 30, 31, 2, 40, 3, 2]
    assert second["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    assert second["labels"] == [-100] * 5 + [41, -100]
    assert second["next_sentence_label"] == 1
    # several files at once
    assert len(load_pretraining_csv([path, path])) == 4


def test_longest_row_is_read_from_the_arrow_lengths(tmp_path):
    path = tmp_path / "lab.csv"
    path.write_text(LAB_CSV, encoding="utf-8")
    dataset = load_pretraining_csv(path)
    assert longest_row(dataset) == 10 == max(len(ids) for ids in dataset["input_ids"])  # padding dropped
    assert longest_row(dataset.select([1, 1])) == 7  # a selection: only its rows count


def test_utf8_bom_and_multiline_text_cells(tmp_path):
    path = tmp_path / "bom.csv"
    body = LAB_CSV.replace('"a b [SEP] c d"', '"a b\nsecond line [SEP] c d"')
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    dataset = load_pretraining_csv(path)
    assert len(dataset) == 2 and dataset[1]["input_ids"] == [1, 30, 31, 2, 40, 3, 2]


def test_write_pretraining_csv_round_trip(tmp_path):
    rows = [{"input_ids": [1, 7, 3, 2, 9, 2], "token_type_ids": [0, 0, 0, 0, 1, 1],
             "labels": [-100, -100, 8, -100, -100, -100], "next_sentence_label": 1}]
    write_pretraining_csv(tmp_path / "x.csv", rows)
    assert load_pretraining_csv(tmp_path / "x.csv").to_list() == rows


def test_write_pretraining_csv_refuses_a_row_of_unequal_lengths_and_writes_nothing(tmp_path):
    good = {"input_ids": [1, 7, 2, 9, 2], "token_type_ids": [0, 0, 0, 1, 1], "labels": [-100] * 5,
            "next_sentence_label": 0}
    bad = dict(good, labels=[-100] * 4)
    with pytest.raises(MiniBertInputError, match="differ in length"):
        write_pretraining_csv(tmp_path / "x.csv", [good, bad])
    assert list(tmp_path.iterdir()) == []


def _as_csv_writer_writes(texts, rows, labels, segments, is_next):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for text, ids, targets, segment, follows in zip(texts, rows, labels, segments, is_next):
        writer.writerow([text, "[" + ", ".join(map(str, ids)) + "]", "[" + ", ".join(map(str, targets)) + "]",
                         ",".join(map(str, segment)), int(follows)])
    return buffer.getvalue()


def test_encode_rows_writes_what_csv_writer_writes():
    """Many rows at once, byte for byte as ``csv.writer`` writes their cells: ids past the lookup table (a
    vocabulary over 65,536) or below it exactly as str() prints them, iterators and numpy arrays, a row of one id
    and a row of none, and texts that need quoting."""
    texts = ["t", 'she said "hi", then left', "plain", "", "two\nlines"]
    rows = [[1, 65535, 65536, 250_001, 2], [1, 7, 2], [5], [], [1, 2]]
    labels = [[0, 0, 70_000, 0, 0], [0, 7, 0], [0], [], [0, 0]]
    segments = [[1, 1, 2, 2, 2], [1, 1, 2], [1], [], [1, 2]]
    is_next = [False, True, True, False, True]
    lengths = [len(row) for row in rows]
    expected = _as_csv_writer_writes(texts, rows, labels, segments, is_next)
    assert encode_rows(texts, iter(list(chain(*rows))), list(chain(*labels)), list(chain(*segments)), lengths,
                       is_next) == expected
    numpy = pytest.importorskip("numpy")
    small = [[1, 9, 2, 8190, 2], [1, 3, 2]]  # inside the table: the looked-up path
    small_labels = [[0, 5, 0, 0, 0], [0, -100, 0]]  # below it
    small_segments = [[1, 1, 1, 2, 2], [1, 1, 2]]
    got = encode_rows(["a", "b"], numpy.array(list(chain(*small)), dtype=numpy.int64),
                      numpy.array(list(chain(*small_labels)), dtype=numpy.int32),
                      numpy.array(list(chain(*small_segments))), numpy.array([5, 3]), [True, False])
    assert got == _as_csv_writer_writes(["a", "b"], small, small_labels, small_segments, [True, False])


HEADER = "Original Text,BERT Input,BERT Label,Segment Label,Is Next"
GOOD = 'x,"[1, 10, 2, 11, 2]","[0, 10, 0, 0, 0]","1,1,1,2,2",1'


def row(inputs="[1, 10, 2, 11, 2]", labels="[0, 10, 0, 0, 0]", segments="1,1,1,2,2", is_next="1"):
    return f'x,"{inputs}","{labels}","{segments}",{is_next}'


def drop_column(name):
    columns = HEADER.split(",")
    index = columns.index(name)
    cells = next(csv.reader([GOOD]))
    del columns[index], cells[index]
    buffer = ",".join(columns) + "\n" + ",".join(f'"{c}"' for c in cells) + "\n"
    return buffer.encode()


def lines(*data_rows):
    return ("\n".join([HEADER, *data_rows]) + "\n").encode()


BAD_CSVS = [
    # (case id, file bytes or special path, kwargs, fragments expected in the message)
    ("empty-file", b"", {}, ["empty file"]),
    ("header-only", lines(), {}, ["no data rows"]),
    ("blank-lines-only", b"\n\n\n", {}, ["empty file"]),
    ("missing-BERT-Input", drop_column("BERT Input"), {}, ["missing column", "'BERT Input'"]),
    ("missing-BERT-Label", drop_column("BERT Label"), {}, ["missing column", "'BERT Label'"]),
    ("missing-Segment-Label", drop_column("Segment Label"), {}, ["missing column", "'Segment Label'"]),
    ("missing-Is-Next", drop_column("Is Next"), {}, ["missing column", "'Is Next'"]),
    ("broken-json", lines(GOOD, row(inputs="[1, 10, 2, 11")), {}, ["row 2", "'BERT Input'", "not a JSON list"]),
    ("json-object", lines(row(inputs='{""a"": 1}')), {}, ["row 1", "'BERT Input'", "JSON dict"]),
    ("json-number", lines(row(labels="7")), {}, ["'BERT Label'", "JSON int"]),
    ("float-ids", lines(GOOD, GOOD, row(inputs="[1, 10.5, 2, 11, 2]")), {}, ["row 3", "'BERT Input'", "10.5"]),
    ("bool-ids", lines(row(labels="[0, true, 0, 0, 0]")), {}, ["'BERT Label'", "true"]),
    ("negative-id", lines(row(inputs="[1, -4, 2, 11, 2]")), {}, ["'BERT Input'", "negative token id -4"]),
    ("too-large-id", lines(row(inputs="[1, 10, 2, 999, 2]")), {"vocab_size": 100}, ["'BERT Input'", "999", "100"]),
    ("too-large-label", lines(row(labels="[0, 500, 0, 0, 0]")), {"vocab_size": 100}, ["'BERT Label'", "500"]),
    # without a vocabulary size, an id past int32 would wrap around when stored: refused instead
    ("id-past-int32", lines(row(), row(inputs="[1, 3000000000, 2, 11, 2]")), {}, ["row 2", "'BERT Input'", "3000000000"]),
    ("id-past-int64", lines(row(), row(labels="[0, 18446744073709551616, 0, 0, 0]")), {},
     ["row 2", "'BERT Label'", "18446744073709551616"]),
    ("empty-list", lines(row(inputs="[]", labels="[]", segments="")), {}, ["'BERT Input'", "empty list"]),
    ("different-lengths", lines(row(labels="[0, 10, 0, 0]")), {}, ["row 1", "different lengths", "4"]),
    ("segment-3", lines(row(segments="1,1,1,3,2")), {}, ["'Segment Label'", "segment value 3"]),
    ("segment-text", lines(row(segments="1,1,a,2,2")), {}, ["'Segment Label'", "0/1/2"]),
    ("segment-all-padding", lines(row(segments="0,0,0,0,0")), {}, ["'Segment Label'", "only padding"]),
    ("is-next-2", lines(row(is_next="2")), {}, ["'Is Next'", "'2'"]),
    ("is-next-blank", lines(row(is_next="")), {}, ["'Is Next'", "blank"]),
    ("is-next-word", lines(row(is_next="yes")), {}, ["'Is Next'", "'yes'"]),
    ("too-long-row", lines(row()), {"max_length": 4}, ["5 tokens", "4 positions"]),
    ("binary-garbage", bytes(random.Random(0).randrange(256) for _ in range(3000)), {}, ["binary"]),
    ("nul-after-header", lines(GOOD) + b"\xff\xfe\x00\x81garbage\n", {}, ["binary"]),
    ("bad-utf8-deep-in-file", lines(*[GOOD] * 2000) + b"\xff\xfe\x81garbage\n", {}, ["cannot parse as CSV", "UTF-8"]),
    ("latin1-header", "Original Text,BERT Input,BERT Label,Segment Label,Is Next,Caf\xe9\n".encode("latin-1")
     + GOOD.encode() + b",x\n", {}, ["UTF-8"]),
    ("directory", "DIR", {}, ["is a directory"]),
    ("missing-path", "MISSING", {}, ["does not exist"]),
]


@pytest.mark.parametrize("case, content, kwargs, fragments", BAD_CSVS, ids=[c[0] for c in BAD_CSVS])
def test_bad_csv_gives_clear_error_naming_file_row_column(tmp_path, case, content, kwargs, fragments):
    if content == "DIR":
        path = tmp_path / "data.csv"
        path.mkdir()
    elif content == "MISSING":
        path = tmp_path / "nope.csv"
    else:
        path = tmp_path / "data.csv"
        path.write_bytes(content)
    with pytest.raises(MiniBertInputError) as caught:
        load_pretraining_csv(path, **kwargs)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_valid_rows_around_errors_load_after_fix(tmp_path):
    """The same file content minus the bad row loads (the error is about that row, not the file)."""
    path = tmp_path / "data.csv"
    path.write_bytes(lines(GOOD, GOOD, GOOD))
    assert len(load_pretraining_csv(path, vocab_size=100, max_length=5)) == 3


def test_loading_a_csv_fills_the_test_sessions_cache_not_the_users(tmp_path):
    """datasets keeps an Arrow copy of every CSV it loads: in the test session's own HF_HOME (conftest), never in
    the user's ~/.cache/huggingface."""
    import os
    from pathlib import Path

    import datasets.config

    home = Path(os.environ["HF_HOME"])
    assert home != Path.home() / ".cache" / "huggingface" and home.name.startswith("minibert-tests-hf-")
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(home)
    path = tmp_path / "rows.csv"
    write_pretraining_csv(path, [{"input_ids": [2, 7, 4, 3, 9, 3], "token_type_ids": [0, 0, 0, 0, 1, 1],
                                  "labels": [-100, -100, 8, -100, -100, -100], "next_sentence_label": 0}])
    before = {p for p in home.rglob("*.arrow")}
    assert len(load_pretraining_csv(path)) == 1
    assert {p for p in home.rglob("*.arrow")} - before, "the Arrow copy went somewhere else"


def test_csv_line_quotes_what_csv_writer_quotes():
    """A lone carriage return, a line feed, a comma or a quote: quoted as csv.writer quotes it."""
    from minibert_hf.pretraining_csv import csv_line

    cells = ["plain", "one\rtwo", "a\nb", "x,y", 'say "hi"', "crlf\r\n", 7]
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    assert csv_line(cells) == buffer.getvalue()


def test_write_pretraining_csv_round_trip_past_one_write_batch(tmp_path):
    """Rows are written 1000 at a time: 2,500 rows come back once each, in order."""
    rows = [{"input_ids": [1, 7 + n % 50, 2, 9, 2], "token_type_ids": [0, 0, 0, 1, 1],
             "labels": [-100, 7 + n % 50, -100, -100, -100], "next_sentence_label": n % 2} for n in range(2500)]
    write_pretraining_csv(tmp_path / "x.csv", rows)
    assert load_pretraining_csv(tmp_path / "x.csv").to_list() == rows


def test_bracketed_segment_labels_read_as_the_plain_ones(tmp_path):
    """Segment Label cells written as a JSON-like list ("[1,1,2]") take the row-by-row reader; the rows come out
    the same as from plain "1,1,2" cells (HF labels: -100 for not a target, 1 - Is Next)."""
    plain, bracketed = tmp_path / "plain.csv", tmp_path / "bracketed.csv"
    plain.write_text(LAB_CSV, encoding="utf-8")
    bracketed.write_text(LAB_CSV.replace('"1,1,1,1,1,0,0,2,2,2,2,2,0,0"', '"[1,1,1,1,1,0,0,2,2,2,2,2,0,0]"')
                         .replace('"1,1,1,1,2,2,2"', '"[1,1,1,1,2,2,2]"'), encoding="utf-8")
    assert "[1,1,1,1,2,2,2]" in bracketed.read_text(encoding="utf-8")
    assert load_pretraining_csv(bracketed).to_list() == load_pretraining_csv(plain).to_list()
