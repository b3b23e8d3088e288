"""The course lab's pretraining CSV <-> Hugging Face rows: a checked reader, a writer, and the one row encoder.

On disk we use the course lab's conventions, so a CSV from the lab trains here and ours reads in the lab's code:

========================  ====================================================================================
``Original Text``         the text of sentence(s) A, `` [SEP] ``, the text of sentence(s) B (before truncation)
``BERT Input``            JSON list of ids: ``[CLS] A [SEP] B [SEP]`` with the masked tokens replaced
``BERT Label``            JSON list of ids: the original id at each prediction target, 0 elsewhere
``Segment Label``         comma-joined ``1`` (``[CLS]``, A, first ``[SEP]``), ``2`` (B, last ``[SEP]``), ``0`` (padding)
``Is Next``               1 when B really follows A, 0 when B comes from another document
========================  ====================================================================================

In memory and in every batch we use Hugging Face BERT's conventions: ``token_type_ids`` 0/1, ``labels`` -100 for
"not a target", ``next_sentence_label`` 0 = B follows A, 1 = B is random. :func:`load_pretraining_csv` and
:func:`write_pretraining_csv` are the one place that converts; the reader drops padding positions (segment 0),
wherever they are, so rows are compact. :func:`encode_rows` writes every CSV row, ours and the pair builder's.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
from itertools import chain
from typing import Iterable, Sequence

import numpy as np

from .atomic import atomic_path
from .errors import MiniBertInputError
from .tokenizer import PAD_ID

CSV_COLUMNS = ("Original Text", "BERT Input", "BERT Label", "Segment Label", "Is Next")
REQUIRED_COLUMNS = ("BERT Input", "BERT Label", "Segment Label", "Is Next")


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


# Ids as text, looked up rather than formatted one by one (5x faster), with each text's width.
_ID_TEXT = [str(i) for i in range(1 << 16)]
_ID_WIDTH = np.array([len(text) for text in _ID_TEXT], dtype=np.int64)


def _joined_rows(values, first, separator: str) -> list[str]:
    """Many rows of integers joined with ``separator``, a string per row, from the rows' values concatenated (row r
    holds values ``first[r]`` to ``first[r + 1]``): one join over all of them, then a slice per row, several times
    faster than a join per row (most of a row's cost when writing CSVs). Values past the table (or negative) are
    formatted with ``str``, as the table would."""
    values = values if isinstance(values, np.ndarray) else np.fromiter(values, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() >= len(_ID_TEXT)):
        texts = [str(value) for value in values.tolist()]
        widths = np.array([len(text) for text in texts], dtype=np.int64)
    else:
        texts = list(map(_ID_TEXT.__getitem__, values.tolist()))
        widths = _ID_WIDTH[values]
    joined = separator.join(texts)
    # character offsets: value k starts at starts[k]; a row of n values ends len(separator) before the next one
    starts = np.concatenate(([0], np.cumsum(widths + len(separator))))
    begin, stop = starts[first[:-1]].tolist(), (starts[first[1:]] - len(separator)).tolist()
    return [joined[b:e] if e > b else "" for b, e in zip(begin, stop)]


_NEEDS_QUOTES = re.compile(r'[",\r\n]')


def csv_line(cells: Iterable) -> str:
    """One CSV line, byte for byte as ``csv.writer`` writes it (a cell quoted only when it holds a comma, a quote or
    a line break; quotes doubled; ``\r\n`` at the end), built directly: several times faster per row."""
    out = []
    for cell in cells:
        text = cell if isinstance(cell, str) else str(cell)
        if _NEEDS_QUOTES.search(text):
            text = '"' + text.replace('"', '""') + '"'
        out.append(text)
    return ",".join(out) + "\r\n"


def encode_rows(texts: Sequence[str], input_ids, labels, segments, lengths, is_next: Sequence[bool]) -> str:
    """The CSV lines of many rows, from values already in the seed's conventions (labels 0 at non-targets,
    segments 1 = A, 2 = B, ``is_next`` true when B follows A): ``input_ids``, ``labels`` and ``segments`` are the
    rows' values concatenated, ``lengths[r]`` of them in row r."""
    first = np.concatenate(([0], np.cumsum(np.asarray(lengths, dtype=np.int64))))  # where each row starts
    inputs, targets = _joined_rows(input_ids, first, ", "), _joined_rows(labels, first, ", ")
    return "".join(csv_line((text, f"[{ids}]", f"[{labelled}]", segment_text, 1 if follows else 0))
                   for text, ids, labelled, segment_text, follows
                   in zip(texts, inputs, targets, _joined_rows(segments, first, ","), is_next))


def write_pretraining_csv(path, rows: Iterable[dict]) -> None:
    """Write rows in HF conventions (``input_ids, token_type_ids, labels, next_sentence_label``) as a seed-format CSV
    (the inverse of :func:`load_pretraining_csv`; handy for tests and for sharing data with the course lab)."""

    def write(handle, batch):
        for row in batch:
            if not len(row["input_ids"]) == len(row["token_type_ids"]) == len(row["labels"]):
                raise MiniBertInputError("a row's input_ids, token_type_ids and labels differ in length", file=path)
        handle.write(encode_rows(
            [""] * len(batch), list(chain.from_iterable(row["input_ids"] for row in batch)),
            [PAD_ID if x == -100 else int(x) for row in batch for x in row["labels"]],
            [int(t) + 1 for row in batch for t in row["token_type_ids"]], [len(row["input_ids"]) for row in batch],
            [int(row["next_sentence_label"]) == 0 for row in batch]))

    with atomic_path(path, unique=True) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(csv_line(CSV_COLUMNS))
        batch = []
        for row in rows:
            batch.append(row)
            if len(batch) == 1000:
                write(handle, batch)
                batch = []
        write(handle, batch)


# --------------------------------------------------------------------------------------------------
# Reading (ours and the course lab's) into a datasets.Dataset
# --------------------------------------------------------------------------------------------------


def _read_header(path: str) -> list[str]:
    if not os.path.exists(path):
        raise MiniBertInputError("file does not exist", file=path)
    if os.path.isdir(path):
        raise MiniBertInputError("is a directory, expected a CSV file", file=path)
    if os.path.getsize(path) == 0:
        raise MiniBertInputError("empty file (expected a CSV header and rows)", file=path)
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if b"\x00" in head:
        raise MiniBertInputError("not a CSV text file (contains NUL bytes; binary data?)", file=path)
    first_line, _, rest = head.partition(b"\n")
    try:
        text = first_line.rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        raise MiniBertInputError("not a UTF-8 CSV file (binary data, or another text encoding?)", file=path) from None
    if not text.strip():
        raise MiniBertInputError("empty file (no CSV header)", file=path)
    if len(head) < (1 << 16) and not rest.strip():
        raise MiniBertInputError("no data rows (only a header)", file=path)
    header = next(csv.reader([text]))
    return [name.strip() for name in header]


def _parse_ids(text, file, row, column) -> list[int]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        shown = (text or "").strip()
        shown = shown[:40] + "..." if len(shown) > 40 else shown
        raise MiniBertInputError(f"not a JSON list of integers: {shown!r}", file=file, row=row, column=column) from None
    if not isinstance(value, list):
        raise MiniBertInputError(
            f"expected a JSON list of integers, got a JSON {type(value).__name__}", file=file, row=row, column=column
        )
    if not value:
        raise MiniBertInputError("empty list", file=file, row=row, column=column)
    for item in value:
        if type(item) is not int:
            raise MiniBertInputError(
                f"not a JSON list of integers: contains {json.dumps(item)}", file=file, row=row, column=column
            )
    return value


def _parse_segments(text, file, row, column) -> list[int]:
    body = (text or "").strip().strip("[]")
    try:
        values = [int(part) for part in body.split(",")] if body else []
    except ValueError:
        shown = body[:40] + "..." if len(body) > 40 else body
        raise MiniBertInputError(
            f"expected comma-separated segment ids 0/1/2, got {shown!r}", file=file, row=row, column=column
        ) from None
    if not values:
        raise MiniBertInputError("empty segment list", file=file, row=row, column=column)
    bad = [v for v in values if v not in (0, 1, 2)]
    if bad:
        raise MiniBertInputError(
            f"segment value {bad[0]} is not 0 (padding), 1 (sentence A) or 2 (sentence B)",
            file=file, row=row, column=column,
        )
    return values


MAX_ID = 2**31 - 1  # ids are stored as int32


class _NeedsRowByRow(Exception):
    """The vectorised fast path met something unusual; the row-by-row path finds and names the problem."""


def _flat_int_lists(cells, n):
    try:
        lists = json.loads("[" + ",".join(cells) + "]")
    except (json.JSONDecodeError, TypeError):
        raise _NeedsRowByRow from None
    if len(lists) != n or any(type(x) is not list or not x for x in lists):
        raise _NeedsRowByRow
    flat = list(chain.from_iterable(lists))
    if set(map(type, flat)) != {int}:
        raise _NeedsRowByRow
    try:
        values = np.array(flat, dtype=np.int64)
    except OverflowError:
        raise _NeedsRowByRow from None
    return values, np.fromiter(map(len, lists), dtype=np.int64, count=n)


def _convert_batch_fast(batch, vocab_size, max_length):
    """The common case, vectorised with numpy: every cell valid. Raises _NeedsRowByRow otherwise."""
    import pyarrow as pa

    n = len(batch["BERT Input"])
    inputs, lengths = _flat_int_lists(batch["BERT Input"], n)
    labels, label_lengths = _flat_int_lists(batch["BERT Label"], n)
    segment_cells = batch["Segment Label"]
    if any(not c or "[" in c for c in segment_cells):
        raise _NeedsRowByRow
    segment_lengths = np.fromiter((c.count(",") + 1 for c in segment_cells), dtype=np.int64, count=n)
    try:
        segments = np.array(",".join(segment_cells).split(","), dtype=np.int64)
    except (ValueError, OverflowError):
        raise _NeedsRowByRow from None
    if not (np.array_equal(lengths, label_lengths) and np.array_equal(lengths, segment_lengths)):
        raise _NeedsRowByRow
    if ((segments < 0) | (segments > 2)).any() or inputs.min() < 0 or labels.min() < 0:
        raise _NeedsRowByRow
    if max(inputs.max(), labels.max()) >= (MAX_ID + 1 if vocab_size is None else vocab_size):
        raise _NeedsRowByRow
    is_next = [(c or "").strip() for c in batch["Is Next"]]
    if any(v not in ("0", "1") for v in is_next):
        raise _NeedsRowByRow
    keep = segments != 0
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    kept = np.add.reduceat(keep.astype(np.int64), starts)
    if (kept == 0).any() or (max_length is not None and (kept > max_length).any()):
        raise _NeedsRowByRow
    offsets = pa.array(np.concatenate(([0], np.cumsum(kept))).astype(np.int32))
    kept_labels = labels[keep]
    kept_labels[kept_labels == PAD_ID] = -100
    return pa.table({
        "input_ids": pa.ListArray.from_arrays(offsets, pa.array(inputs[keep].astype(np.int32))),
        "token_type_ids": pa.ListArray.from_arrays(offsets, pa.array((segments[keep] - 1).astype(np.int8))),
        "labels": pa.ListArray.from_arrays(offsets, pa.array(kept_labels.astype(np.int32))),
        "next_sentence_label": pa.array([1 - int(v) for v in is_next], type=pa.int64()),
    })


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([("input_ids", pa.list_(pa.int32())), ("token_type_ids", pa.list_(pa.int8())),
                      ("labels", pa.list_(pa.int32())), ("next_sentence_label", pa.int64())])


def _convert_batch(batch, indices, *, file, vocab_size, max_length):
    """Seed conventions -> HF conventions for a batch of string rows (validating every cell)."""
    try:
        return _convert_batch_fast(batch, vocab_size, max_length)
    except _NeedsRowByRow:
        import pyarrow as pa

        try:
            rows = _convert_batch_rows(batch, indices, file=file, vocab_size=vocab_size, max_length=max_length)
        except MiniBertInputError as error:
            # say once which row numbering this is (a quoted cell may span lines, so it is not the line number)
            raise MiniBertInputError(f"{error.message} (rows are counted from 1 after the header)", file=error.file,
                                     row=error.row, column=error.column) from None
        return pa.table(rows, schema=_arrow_schema())


def _convert_batch_rows(batch, indices, *, file, vocab_size, max_length):
    """Row by row, naming the row and column of the first problem."""
    out = {"input_ids": [], "token_type_ids": [], "labels": [], "next_sentence_label": []}
    for n, index in enumerate(indices):
        row = index + 1
        inputs = _parse_ids(batch["BERT Input"][n], file, row, "BERT Input")
        labels = _parse_ids(batch["BERT Label"][n], file, row, "BERT Label")
        segments = _parse_segments(batch["Segment Label"][n], file, row, "Segment Label")
        if not (len(inputs) == len(labels) == len(segments)):
            raise MiniBertInputError(
                f"lists of different lengths: BERT Input {len(inputs)}, BERT Label {len(labels)}, "
                f"Segment Label {len(segments)}",
                file=file, row=row,
            )
        for column, ids in (("BERT Input", inputs), ("BERT Label", labels)):
            low, high = min(ids), max(ids)
            if low < 0:
                raise MiniBertInputError(f"negative token id {low}", file=file, row=row, column=column)
            if vocab_size is not None and high >= vocab_size:
                raise MiniBertInputError(
                    f"token id {high} is outside the vocabulary (size {vocab_size})", file=file, row=row, column=column
                )
            if high > MAX_ID:
                raise MiniBertInputError(f"token id {high} is larger than any vocabulary ({MAX_ID} at most)",
                                         file=file, row=row, column=column)
        is_next = (batch["Is Next"][n] or "").strip()
        if is_next not in ("0", "1"):
            shown = is_next if is_next else "blank"
            raise MiniBertInputError(
                f"expected 0 (random B) or 1 (B follows A), got {shown!r}" if is_next else
                "expected 0 (random B) or 1 (B follows A), got a blank cell",
                file=file, row=row, column="Is Next",
            )
        keep = [i for i, s in enumerate(segments) if s != 0]
        if not keep:
            raise MiniBertInputError("row has only padding (every segment is 0)", file=file, row=row,
                                     column="Segment Label")
        if max_length is not None and len(keep) > max_length:
            raise MiniBertInputError(
                f"row has {len(keep)} tokens, more than the model's {max_length} positions; prepare the data with "
                f"--max-seq-length {max_length} or less",
                file=file, row=row, column="BERT Input",
            )
        out["input_ids"].append([inputs[i] for i in keep])
        out["token_type_ids"].append([segments[i] - 1 for i in keep])
        out["labels"].append([labels[i] if labels[i] != PAD_ID else -100 for i in keep])
        out["next_sentence_label"].append(1 - int(is_next))
    return out


PROGRESS_MIN_BYTES = 16 << 20  # CSVs smaller than this are read without progress bars


@contextlib.contextmanager
def _datasets_progress(show: bool):
    """datasets' progress bars ("Generating train split", "reading x.csv") on or off for the block, then restored.
    HF_DATASETS_DISABLE_PROGRESS_BARS, when set, has the last word (as in datasets)."""
    import importlib

    datasets_tqdm = importlib.import_module("datasets.utils.tqdm")  # the module (datasets.utils.tqdm is a class)
    if getattr(datasets_tqdm, "HF_DATASETS_DISABLE_PROGRESS_BARS", None) is not None:
        yield
        return
    was_disabled = datasets_tqdm.are_progress_bars_disabled()
    (datasets_tqdm.enable_progress_bars if show else datasets_tqdm.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets_tqdm.disable_progress_bars if was_disabled else datasets_tqdm.enable_progress_bars)()


def _load_one_csv(path: str, vocab_size, max_length, num_proc, show_progress=None):
    header = _read_header(path)
    if show_progress is None:
        show_progress = os.path.getsize(path) >= PROGRESS_MIN_BYTES
    with _datasets_progress(bool(show_progress)):
        return _load_checked_csv(path, header, vocab_size, max_length, num_proc)


def _parse_error(error, path) -> MiniBertInputError:
    """The innermost cause of a failed ``load_dataset("csv")`` as one line. pandas counts the header as line 1, so
    its "line N" is data row N - 1."""
    cause = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    reason = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    if isinstance(cause, UnicodeDecodeError):
        return MiniBertInputError("cannot parse as CSV: not valid UTF-8 text (binary data?)", file=path)
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", reason)
    if fields:
        expected, line, seen = map(int, fields.groups())
        return MiniBertInputError(f"has {seen} fields, the header has {expected} (rows are counted from 1 after "
                                  "the header)", file=path, row=line - 1)
    return MiniBertInputError(f"cannot parse as CSV: {reason}", file=path)


def _load_checked_csv(path: str, header, vocab_size, max_length, num_proc):
    import datasets

    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise MiniBertInputError(f"missing column (found: {', '.join(repr(h) for h in header)})",
                                     file=path, column=column)
    features = datasets.Features({name: datasets.Value("string") for name in header})
    if num_proc is None:
        num_proc = min(4, os.cpu_count() or 1) if os.path.getsize(path) > (64 << 20) else None
    # datasets' CSV builder logs its own copy of a parse error, with the file's absolute path; the one line is ours
    csv_builder_log = logging.getLogger("datasets.packaged_modules.csv.csv")
    level = csv_builder_log.level
    csv_builder_log.setLevel(logging.CRITICAL)
    try:
        raw = datasets.load_dataset(
            "csv", data_files=os.path.abspath(path), split="train", features=features,
            column_names=header, skiprows=1, na_filter=False, keep_default_na=False, encoding="utf-8",
        )
    except MiniBertInputError:
        raise
    except Exception as error:  # pandas/pyarrow parse errors arrive wrapped by datasets
        raise _parse_error(error, path) from None
    finally:
        csv_builder_log.setLevel(level)
    if len(raw) == 0:
        raise MiniBertInputError("no data rows (only a header)", file=path)
    output = datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "token_type_ids": datasets.List(datasets.Value("int8")),
        "labels": datasets.List(datasets.Value("int32")),
        "next_sentence_label": datasets.Value("int64"),
    })
    return raw.map(
        _convert_batch,
        batched=True,
        batch_size=1000,
        with_indices=True,
        remove_columns=raw.column_names,
        features=output,
        num_proc=num_proc,
        fn_kwargs={"file": path, "vocab_size": vocab_size, "max_length": max_length},
        desc=f"reading {os.path.basename(path)}",
    )


def load_pretraining_csv(path_or_paths, vocab_size: int | None = None, max_length: int | None = None,
                         num_proc: int | None = None, show_progress: bool | None = None):
    """Read pre-training CSVs (ours or the course lab's) into a ``datasets.Dataset`` in HF conventions.

    Columns: ``input_ids`` (padding positions dropped), ``token_type_ids`` (0 = ``[CLS]`` A ``[SEP]``, 1 = B
    ``[SEP]``), ``labels`` (the target id, -100 = not a target), ``next_sentence_label`` (0 = B follows A,
    1 = random). Every cell is checked; a problem raises :class:`MiniBertInputError` (a ``ValueError``) naming the
    file, the row (``row N`` = the N-th data row, the header not counted) and the column. ``vocab_size``: also
    reject ids outside ``[0, vocab_size)``; ``max_length``: reject rows longer than that.
    A UTF-8 BOM is fine. ``show_progress``: datasets' progress bars while reading (default: only for files over
    16 MB, so that a bad small file is reported as one line on stderr with no bars before it).
    """
    import datasets

    if isinstance(path_or_paths, (str, os.PathLike)):
        paths = [os.fspath(path_or_paths)]
    else:
        paths = [os.fspath(p) for p in path_or_paths]
    if not paths:
        raise MiniBertInputError("no CSV files given")
    parts = [_load_one_csv(p, vocab_size, max_length, num_proc, show_progress) for p in paths]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def longest_row(dataset) -> int:
    """The length of the longest ``input_ids`` row, from the Arrow list lengths (no Python copy of the column)."""
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")["input_ids"]  # the rows of this dataset (a selection: only those)
    return int(pc.max(pc.list_value_length(column)).as_py() or 0)
