"""Documents -> pretraining data: the tokenizer, ``train.csv``/``test.csv`` and ``stats.json`` of one corpus.

:func:`prepare_pretraining_data` streams documents in windows (the pool NSP negatives come from), builds pairs and
masks in worker processes (:mod:`minibert_hf.pairs`) and moves everything into place only when complete.
:class:`PreparationOptions` is every choice that changes the output, as one frozen, checked value, recorded in
``stats.json``. :func:`prepare_default_data` prepares the default corpus once into the cache, in a folder named
by the options and a fingerprint of the preparation code, for training and the benchmark alike.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from .atomic import atomic_folder, remove, remove_stale_temporaries, replace, temporary_name, write_json
from .errors import MiniBertInputError
from .pairs import process_window
from .pretraining_csv import CSV_COLUMNS, csv_line
from .tokenizer import DEFAULT_VOCAB_SIZE, MIN_VOCAB_SIZE, check_special_ids, load_tokenizer, train_tokenizer


@dataclasses.dataclass(frozen=True)
class PreparationOptions:
    """Everything that decides what ``prepare_pretraining_data`` writes (checked when made; in ``stats.json``)."""

    vocab_size: int = dataclasses.field(default=DEFAULT_VOCAB_SIZE, metadata={
        "help": "WordPiece vocabulary size of the tokenizer trained on the corpus (ignored with --tokenizer)"})
    max_seq_length: int = dataclasses.field(default=128, metadata={
        "help": "tokens per row, [CLS] and both [SEP] included"})
    mlm_probability: float = dataclasses.field(default=0.15, metadata={
        "help": "fraction of the tokens of a row that are MLM targets (80%% [MASK], 10%% random, 10%% kept)"})
    test_size: float = dataclasses.field(default=0.05, metadata={
        "help": "fraction of the documents held out for test.csv (split by document)"})
    seed: int = dataclasses.field(default=42, metadata={"help": "seed of pairs, masks and the split"})
    dupe_factor: int = dataclasses.field(default=1, metadata={
        "help": "write each training document's pairs K times, with other pairings and masks (test.csv: once)"})
    short_seq_prob: float = dataclasses.field(default=0.1, metadata={
        "help": "probability that a pair aims at a random shorter length (BERT's short_seq_prob)"})
    window: int = dataclasses.field(default=1000, metadata={
        "help": "documents held in memory at once, the pool NSP negatives are drawn from"})
    tokenizer_sample_mb: float = dataclasses.field(default=32.0, metadata={
        "help": "train the tokenizer on about this many MB of text, documents drawn evenly with the seed, when the "
                "corpus is larger (0 = on all of it; the default corpus is smaller; ignored with --tokenizer)"})

    def __post_init__(self):
        def need(ok, name, rule):
            if not ok:
                raise MiniBertInputError(f"--{name.replace('_', '-')} must be {rule}, got {getattr(self, name)!r}")

        for name in ("vocab_size", "max_seq_length", "seed", "dupe_factor", "window"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), name, "a whole number")
        need(self.vocab_size >= MIN_VOCAB_SIZE, "vocab_size", f"at least {MIN_VOCAB_SIZE}")
        need(self.max_seq_length >= 8, "max_seq_length", "at least 8")
        need(0.0 < self.mlm_probability < 1.0, "mlm_probability", "between 0 and 1")
        need(0.0 <= self.test_size < 1.0, "test_size", "in [0, 1)")
        need(self.dupe_factor >= 1, "dupe_factor", "at least 1")
        need(0.0 <= self.short_seq_prob <= 1.0, "short_seq_prob", "in [0, 1]")
        need(self.window >= 1, "window", "at least 1")
        need(isinstance(self.tokenizer_sample_mb, (int, float)) and not isinstance(self.tokenizer_sample_mb, bool)
             and self.tokenizer_sample_mb >= 0, "tokenizer_sample_mb", "a number, 0 or more")


def _documents_factory(documents, text_files) -> tuple[Callable[[], Iterator[list]], dict]:
    from .corpus import make_source

    if documents is None:
        return make_source(text_files=text_files)
    if callable(documents):
        return documents, {"name": "documents", "source": "given in Python", "license": "unknown"}
    documents = list(documents)
    return (lambda: iter(documents)), {"name": "documents", "source": "given in Python", "license": "unknown"}


def prepare_pretraining_data(output_dir, options: PreparationOptions | None = None, *, text_files=None,
                             documents=None, source_info: dict | None = None, tokenizer=None,
                             show_progress: bool = True, num_workers: int | None = None, **fields) -> dict:
    """Write ``train.csv``, ``test.csv``, ``tokenizer/`` and ``stats.json`` into ``output_dir``; return the stats.

    ``options``: a :class:`PreparationOptions`; or give its fields as keywords (``vocab_size=300, seed=7``).
    Source: ``documents`` (a list of documents, or a callable returning a fresh iterator of them; a document is a
    list of paragraphs), else ``text_files`` (one paragraph per line, blank line between documents), else the default
    corpus. ``tokenizer``: a tokenizer object or folder to use instead of training one with ``options.vocab_size``.

    Everything is written under a temporary name inside ``output_dir`` and moved into place at the end, so an
    interrupted or failed run leaves no ``train.csv`` behind. Documents are streamed in windows of
    ``options.window`` documents, so memory stays flat in the corpus size; NSP negatives come from other documents
    of the same window and split. Windows are processed by ``num_workers`` processes (default: one per core, up to
    4; 0 = inline); each window has its own seeded generator, so the output is the same for any number of workers.
    """
    options = dataclasses.replace(options, **fields) if options is not None else PreparationOptions(**fields)
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
        raise MiniBertInputError(f"num_workers must be 0 or more, got {num_workers!r}")
    started = time.perf_counter()
    cpu_started = _cpu_seconds()
    open_documents, info = _documents_factory(documents, text_files)
    if source_info:
        info = {**info, **source_info}

    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output_dir)
        tmp = temporary_name(output_dir / "prepare", unique=True)  # .tmp-prepare.pid<N>: its parts move out
        remove(tmp)
        tmp.mkdir()
    except OSError as error:
        raise MiniBertInputError(f"cannot write the output folder: {error.strerror}", file=output_dir) from None

    try:
        # 1. tokenizer
        t0 = time.perf_counter()
        sample_fraction = None
        if tokenizer is None:
            first_pass, sample_fraction = tokenizer_documents(options, open_documents,
                                                              text_files if documents is None else None)
            if show_progress:
                from tqdm.auto import tqdm

                total = len(first_pass) if hasattr(first_pass, "__len__") else None
                first_pass = tqdm(first_pass, total=total, unit="doc", desc="tokenizer", mininterval=1.0)
            tokenizer = train_tokenizer((p for doc in first_pass for p in doc), vocab_size=options.vocab_size,
                                        model_max_length=options.max_seq_length, show_progress=False)
            tokenizer_trained = True
        else:
            if isinstance(tokenizer, (str, os.PathLike)):
                tokenizer = load_tokenizer(tokenizer)
            check_special_ids(tokenizer)
            tokenizer_trained = False
        tokenizer_seconds = time.perf_counter() - t0
        tokenizer.save_pretrained(tmp / "tokenizer")

        # 2. pairs, masks, CSVs
        t1 = time.perf_counter()
        counts = _write_pairs(open_documents(), tokenizer, tmp, options, show_progress, num_workers)
        pairs_seconds = time.perf_counter() - t1

        if counts["documents"] < 2 or counts["pairs"]["train"] == 0:
            raise MiniBertInputError(
                f"too little text to make a sentence pair: found {counts['documents']} document(s) with "
                f"{counts['sentences']} sentence(s); need at least 2 documents (separate documents with a blank "
                "line) with enough text",
                file=", ".join(info["files"]) if info.get("files") else None,
            )
        if len(tokenizer) > 0 and counts["tokens"] == 0:
            raise MiniBertInputError("no tokens after tokenisation",
                                     file=", ".join(info["files"]) if info.get("files") else None)

        total_seconds = time.perf_counter() - started
        cpu_seconds = _cpu_seconds() - cpu_started
        stats = _stats(info, counts, options, len(tokenizer), tokenizer_trained,
                       dict(tokenizer=tokenizer_seconds, pairs=pairs_seconds, total=total_seconds, cpu=cpu_seconds))
        stats["tokenizer_sample_fraction"] = None if sample_fraction is None else round(sample_fraction, 6)
        write_json(tmp / "stats.json", stats)

        # 3. move into place: the CSVs last, so train.csv exists only when everything else does
        for name in ("tokenizer", "stats.json", "test.csv", "train.csv"):
            replace(tmp / name, output_dir / name)
        return stats
    finally:
        remove(tmp)


def tokenizer_documents(options: PreparationOptions, open_documents, text_files=None) -> tuple[Iterator, float]:
    """The documents the tokenizer trains on, and their expected share: all of them (1.0) unless the corpus is
    larger than ``options.tokenizer_sample_mb``, then each document with that share's probability, drawn with the
    seed. The corpus's size: its text files' sizes, else one counting pass over the documents (characters, about
    bytes for most text)."""
    fraction = 1.0
    if options.tokenizer_sample_mb:
        if text_files:
            size = sum(os.path.getsize(name) for name in text_files)
        else:
            size = sum(len(paragraph) for document in open_documents() for paragraph in document)
        fraction = min(1.0, options.tokenizer_sample_mb * 1e6 / max(size, 1))
    documents = open_documents()
    if fraction < 1.0:
        draw = random.Random(f"{options.seed}/tokenizer-sample").random
        documents = (document for document in documents if draw() < fraction)
    return documents, fraction


def _stats(info: dict, counts: dict, options: PreparationOptions, vocab_size: int, tokenizer_trained: bool,
           seconds: dict) -> dict:
    """stats.json: where the text came from (never a local path), what was made of it, how long it took."""
    masking = counts["masking"]
    targets = max(1, masking["targets"])
    pairs = counts["pairs"]["train"] + counts["pairs"]["test"]
    return {
        "source": info.get("source"),
        "license": info.get("license"),
        "corpus": info.get("name"),
        **{key: info[key] for key in ("dataset", "license_url") if key in info},
        **({"source_url": info["url"]} if "url" in info else {}),
        "documents": counts["documents"],
        "documents_train": counts["documents_split"]["train"],
        "documents_test": counts["documents_split"]["test"],
        "sentences": counts["sentences"],
        "tokens": counts["tokens"],
        "raw_bytes": counts["raw_bytes"],
        "pairs": pairs,
        "pairs_train": counts["pairs"]["train"],
        "pairs_test": counts["pairs"]["test"],
        "row_tokens": counts["row_tokens"],
        "mean_row_length": round(counts["row_tokens"] / max(1, pairs), 2),
        "target_fraction": round(masking["targets"] / max(1, masking["candidates"]), 5),
        "mask_fraction": round(masking["mask"] / targets, 5),
        "random_fraction": round(masking["random"] / targets, 5),
        "keep_fraction": round(masking["keep"] / targets, 5),
        "nsp_is_next_fraction": round(counts["is_next"] / max(1, pairs), 5),
        "vocab_size": vocab_size,
        "tokenizer_trained": tokenizer_trained,
        "max_seq_length": options.max_seq_length,
        "mlm_probability": options.mlm_probability,
        "test_size": options.test_size,
        "dupe_factor": options.dupe_factor,
        "seed": options.seed,
        "options": dataclasses.asdict(options),
        "seconds_tokenizer": round(seconds["tokenizer"], 3),
        "seconds_pairs": round(seconds["pairs"], 3),
        "seconds_total": round(seconds["total"], 3),
        "mb_per_second": round(counts["raw_bytes"] / 1e6 / max(seconds["total"], 1e-9), 3),
        "cpu_seconds": round(seconds["cpu"], 3),
        "mb_per_cpu_second": round(counts["raw_bytes"] / 1e6 / max(seconds["cpu"], 1e-9), 3),
    }


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children, e.g. the pair-building workers."""
    try:
        import resource
    except ImportError:  # Windows
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _is_test(index: int, test_size: float) -> bool:
    """Deterministic, evenly spread split by document: document k is a test document when the running count of
    test documents ``floor(k * test_size + 1)`` steps up, i.e. documents 0, 1/test_size, 2/test_size, ... (the first
    document is always a test document, so even a small corpus gets a non-empty test.csv)."""
    if test_size <= 0:
        return False
    return math.floor((index + 1) * test_size + 1 - test_size) > math.floor(index * test_size + 1 - test_size)


def _default_workers() -> int:
    """One worker per core (up to 4) on Linux, where workers are forked cheaply; elsewhere inline (0), because a
    spawned worker would re-import torch and transformers (seconds each) before doing any work."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(0, min(cores, 4)) if cores > 1 else 0


def _write_pairs(documents, tokenizer, folder, options: PreparationOptions, show_progress: bool,
                 num_workers: int | None = None) -> dict:
    """Stream the documents into windows per split, process the windows (in a pool of workers or inline) and
    append their rows to ``folder/train.csv`` and ``folder/test.csv`` in window order; return the counts."""
    from collections import deque

    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    counts = {
        "documents": 0, "documents_split": {"train": 0, "test": 0}, "sentences": 0, "tokens": 0, "raw_bytes": 0,
        "pairs": {"train": 0, "test": 0}, "row_tokens": 0, "is_next": 0,
        "masking": {"targets": 0, "candidates": 0, "mask": 0, "random": 0, "keep": 0},
    }
    buffers = {"train": [], "test": []}  # documents (lists of paragraphs) waiting to be processed
    previous = {"train": None, "test": None}  # the last window of each split: spare negatives for a tiny window
    windows = {"train": 0, "test": 0}
    num_workers = _default_workers() if num_workers is None else int(num_workers)

    progress = None
    if show_progress:
        from tqdm.auto import tqdm

        total = len(documents) if hasattr(documents, "__len__") else None
        progress = tqdm(total=total, unit="doc", desc="documents", mininterval=1.0)

    pool = None
    if num_workers > 1:
        import multiprocessing

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker; silences the fork warning
        # Forked workers share the parent's memory copy-on-write; freezing the parent's objects keeps the workers'
        # garbage collector from touching (and so copying) them, so worker memory stays flat over a long run.
        gc.collect()
        gc.freeze()
        try:
            pool = multiprocessing.get_context(method).Pool(num_workers)
        finally:
            gc.unfreeze()
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved
    pending: deque = deque()

    try:
        with open(folder / "train.csv", "w", encoding="utf-8", newline="") as train_file, \
                open(folder / "test.csv", "w", encoding="utf-8", newline="") as test_file:
            files = {"train": train_file, "test": test_file}
            for handle in files.values():
                handle.write(csv_line(CSV_COLUMNS))

            def collect(split, result):
                text, window_counts = result
                files[split].write(text)
                counts["sentences"] += window_counts["sentences"]
                counts["tokens"] += window_counts["tokens"]
                counts["pairs"][split] += window_counts["pairs"]
                counts["row_tokens"] += window_counts["row_tokens"]
                counts["is_next"] += window_counts["is_next"]
                for key, value in window_counts["masking"].items():
                    counts["masking"][key] += value

            def flush(split):
                texts = buffers[split]
                buffers[split] = []
                if not texts:
                    return
                spare = None
                if len(texts) < 2:  # one document: NSP negatives from the split's previous window; held-out text
                    # never goes into a training row, but a held-out split of one document may borrow training text
                    spare = previous[split] or (None if split == "train" else
                                                previous["train"] or (list(buffers["train"]) or None))
                previous[split] = texts
                job = (options, tokenizer_json, split, windows[split], texts, spare)
                windows[split] += 1
                if pool is None:
                    collect(split, process_window(job))
                    return
                pending.append((split, pool.apply_async(process_window, (job,))))
                while len(pending) > 2 * num_workers:  # bounded: memory stays flat
                    done_split, result = pending.popleft()
                    collect(done_split, result.get())

            for index, document in enumerate(documents):
                split = "test" if _is_test(index, options.test_size) else "train"
                counts["documents"] += 1
                counts["documents_split"][split] += 1
                counts["raw_bytes"] += sum(len(p.encode("utf-8")) for p in document)
                buffers[split].append(document)
                if len(buffers[split]) >= options.window:
                    flush(split)
                if progress is not None:
                    progress.update(1)
            flush("train")
            flush("test")
            while pending:
                done_split, result = pending.popleft()
                collect(done_split, result.get())
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if progress is not None:
            progress.close()
    return counts


# --------------------------------------------------------------------------------------------------
# The default corpus, prepared once into the cache
# --------------------------------------------------------------------------------------------------


def preparation_fingerprint() -> str:
    """A short hash of the code that turns the default corpus into CSVs (corpus reading, tokenizer, pairs, masks and
    the CSV encoding): a cache written by other code is never taken for this code's output."""
    from . import corpus, pairs, pretraining_csv, tokenizer

    digest = hashlib.sha256()
    for module in (corpus, pairs, pretraining_csv, sys.modules[__name__], tokenizer):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:10]


def default_data_dir(options: PreparationOptions, prefix: str = "pretraining-default") -> Path:
    """The cache folder of the default corpus prepared with ``options`` by this code (see :func:`prepare_default_data`)."""
    from .corpus import cache_dir

    fields = [f"vocab{options.vocab_size}", f"len{options.max_seq_length}"]
    fields += [f"{f.name}{getattr(options, f.name)}" for f in dataclasses.fields(options)
               if f.name not in ("vocab_size", "max_seq_length") and getattr(options, f.name) != f.default]
    return cache_dir() / "-".join([prefix, *fields, preparation_fingerprint()])


def prepare_default_data(options: PreparationOptions | None = None, prefix: str = "pretraining-default",
                         **fields) -> Path:
    """The default corpus prepared once with ``options`` into the cache ($MINIBERT_CACHE, default
    ~/.cache/minibert-hf), reused by later calls of the same preparation code; returns the folder.

    The folder is named by the options and :func:`preparation_fingerprint`; folders of other code versions are
    left alone (another checkout may be using them) and can be deleted by hand.
    """
    options = dataclasses.replace(options, **fields) if options is not None else PreparationOptions(**fields)
    folder = default_data_dir(options, prefix)
    if not all((folder / name).exists() for name in ("train.csv", "test.csv", "tokenizer", "stats.json")):
        print(f"Preparing the default corpus into {folder} (once) ...", flush=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(folder, unique=True) as tmp:
            prepare_pretraining_data(tmp, options)
    return folder
