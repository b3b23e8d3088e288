"""From documents to training batches: NSP pairs, MLM masking, the seed-compatible CSV, and collation.

On disk (CSV) we use the course lab's conventions, so a CSV from the lab trains here and ours reads in the lab's code:

========================  ====================================================================================
``Original Text``         the text of sentence(s) A, `` [SEP] ``, the text of sentence(s) B (before truncation)
``BERT Input``            JSON list of ids: ``[CLS] A [SEP] B [SEP]`` with the masked tokens replaced
``BERT Label``            JSON list of ids: the original id at each prediction target, 0 elsewhere
``Segment Label``         comma-joined ``1`` (``[CLS]``, A, first ``[SEP]``), ``2`` (B, last ``[SEP]``), ``0`` (padding)
``Is Next``               1 when B really follows A, 0 when B comes from another document
========================  ====================================================================================

In memory and in every batch we use Hugging Face BERT's conventions: ``token_type_ids`` 0/1, ``labels`` -100 for
"not a target", ``next_sentence_label`` 0 = B follows A, 1 = B is random. :func:`load_pretraining_csv` is the one place
that converts; it drops padding positions (segment 0), wherever they are, so rows are compact.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import math
import os
import random
import shutil
import sys
import time
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import MiniBertInputError
from .tokenizer import (
    CLS_ID,
    DEFAULT_VOCAB_SIZE,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_IDS,
    check_special_ids,
    load_tokenizer,
    train_tokenizer,
)

CSV_COLUMNS = ("Original Text", "BERT Input", "BERT Label", "Segment Label", "Is Next")
REQUIRED_COLUMNS = ("BERT Input", "BERT Label", "Segment Label", "Is Next")
NUM_SPECIAL = len(SPECIAL_IDS)
DEFAULT_MAX_SEQ_LENGTH = 128
DEFAULT_TEST_SIZE = 0.05
DEFAULT_SEED = 42
DEFAULT_WINDOW = 1000  # documents held in memory at once (the pool NSP negatives are drawn from)

# --------------------------------------------------------------------------------------------------
# NSP pairs (BERT's create_pretraining_data recipe) and MLM masking
# --------------------------------------------------------------------------------------------------


class PairBuilder:
    """Builds NSP sentence pairs from tokenised documents, as in BERT's ``create_instances_from_document``.

    Sentences of a document are accumulated into a chunk up to a target length (``max_seq_length - 3``, or with
    probability ``short_seq_prob`` a random shorter one); the chunk is split at a random sentence boundary into A and
    the true continuation B. In half of the pairs B is instead taken from a *different* document (never the true
    next segment), and the unused sentences of the chunk go back to be used for the next pair. The pair is truncated
    longest-first (randomly from the front or the back) to fit ``[CLS] A [SEP] B [SEP]`` in ``max_seq_length``.

    A chunk of a single sentence can only make a random pair; to keep NSP at 50/50 anyway, a free choice favours the
    label that is behind (a coin flip when even).
    """

    def __init__(self, max_seq_length: int, rng: random.Random, short_seq_prob: float = 0.1):
        self.max_num_tokens = max_seq_length - 3
        self.rng = rng
        self.short_seq_prob = short_seq_prob
        self.balance = 0  # (#random pairs) - (#true-next pairs)

    def _choose_random_next(self, forced: bool) -> bool:
        if forced:
            return True
        if self.balance > 0:
            return False
        if self.balance < 0:
            return True
        return self.rng.random() < 0.5

    def pairs_from_document(self, doc_index: int, documents: Sequence[list], pool: Sequence[int]):
        """Yield ``(tokens_a, tokens_b, is_random_next, a_span, b_ref)`` for one document.

        ``documents[i]`` is a list of sentences, each a list of token ids; ``pool`` are indexes of the (non-empty)
        documents a random B may come from. ``a_span`` = (doc, first, last) sentence range of A, ``b_ref`` likewise for B.
        """
        rng = self.rng
        document = documents[doc_index]
        has_other = len(pool) > 1 or (len(pool) == 1 and pool[0] != doc_index)
        target_seq_length = self.max_num_tokens
        if rng.random() < self.short_seq_prob:
            target_seq_length = rng.randint(2, self.max_num_tokens)
        chunk: list[int] = []  # sentence indexes
        chunk_length = 0
        i = 0
        while i < len(document):
            chunk.append(i)
            chunk_length += len(document[i])
            if i == len(document) - 1 or chunk_length >= target_seq_length:
                a_end = 1 if len(chunk) < 2 else rng.randint(1, len(chunk) - 1)
                tokens_a = [t for s in chunk[:a_end] for t in document[s]]
                a_span = (doc_index, chunk[0], chunk[a_end - 1])
                random_next = self._choose_random_next(forced=len(chunk) == 1)
                if random_next and not has_other:
                    random_next = False
                    if len(chunk) == 1:  # nothing can be paired with this sentence
                        chunk, chunk_length = [], 0
                        i += 1
                        continue
                if random_next:
                    target_b_length = max(1, target_seq_length - len(tokens_a))
                    other = doc_index
                    while other == doc_index:
                        other = pool[rng.randrange(len(pool))]
                    other_doc = documents[other]
                    start = rng.randrange(len(other_doc))
                    tokens_b = []
                    end = start
                    for end in range(start, len(other_doc)):
                        tokens_b.extend(other_doc[end])
                        if len(tokens_b) >= target_b_length:
                            break
                    b_ref = (other, start, end)
                    i -= len(chunk) - a_end  # put the unused sentences back
                else:
                    tokens_b = [t for s in chunk[a_end:] for t in document[s]]
                    b_ref = (doc_index, chunk[a_end], chunk[-1])
                self.balance += 1 if random_next else -1
                self._truncate_pair(tokens_a, tokens_b)
                if tokens_a and tokens_b:
                    yield tokens_a, tokens_b, random_next, a_span, b_ref
                chunk, chunk_length = [], 0
            i += 1

    def _truncate_pair(self, tokens_a: list, tokens_b: list) -> None:
        """Trim the longer side one token at a time, from its front or back at random (BERT's rule); the cuts are
        counted first and applied once, so a huge sentence costs O(excess), not O(excess * length)."""
        length_a, length_b = len(tokens_a), len(tokens_b)
        cuts = {"a_front": 0, "a_back": 0, "b_front": 0, "b_back": 0}
        random_ = self.rng.random
        while length_a + length_b > self.max_num_tokens:
            side = "a" if length_a > length_b else "b"
            cuts[f"{side}_front" if random_() < 0.5 else f"{side}_back"] += 1
            if side == "a":
                length_a -= 1
            else:
                length_b -= 1
        for tokens, front, back in ((tokens_a, cuts["a_front"], cuts["a_back"]),
                                    (tokens_b, cuts["b_front"], cuts["b_back"])):
            if back:
                del tokens[len(tokens) - back:]
            if front:
                del tokens[:front]


def mask_rows(rows: Sequence[list], vocab_size: int, mlm_probability: float, rng: np.random.Generator):
    """BERT's static masking for a list of rows of ids, vectorised.

    In each row, ``mlm_probability`` of the non-special tokens become targets (the count stochastically rounded, at
    least one); of the targets 80% become ``[MASK]``, 10% a random non-special token, 10% stay unchanged.
    Returns ``(inputs, labels, counts)``: flat int64 arrays (rows concatenated; labels 0 at non-targets, the seed
    format) and a dict of counts.
    """
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    tokens = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    row_of = np.repeat(np.arange(len(rows)), lengths)
    candidate = tokens >= NUM_SPECIAL
    positions = np.flatnonzero(candidate)
    per_row = np.bincount(row_of[positions], minlength=len(rows))
    expected = per_row * mlm_probability
    wanted = np.floor(expected + rng.random(len(rows))).astype(np.int64)
    wanted = np.minimum(per_row, np.maximum(wanted, 1))
    # pick `wanted[r]` candidates of row r uniformly: sort candidates by (row, random key), keep the first ones
    order = np.lexsort((rng.random(len(positions)), row_of[positions]))
    sorted_positions = positions[order]
    sorted_rows = row_of[sorted_positions]
    row_start = np.concatenate(([0], np.cumsum(per_row)[:-1]))
    rank = np.arange(len(sorted_positions)) - row_start[sorted_rows]
    targets = sorted_positions[rank < wanted[sorted_rows]]
    targets.sort()
    draw = rng.random(len(targets))
    inputs = tokens.copy()
    labels = np.zeros_like(tokens)
    labels[targets] = tokens[targets]
    masked = targets[draw < 0.8]
    randomised = targets[(draw >= 0.8) & (draw < 0.9)]
    inputs[masked] = MASK_ID
    inputs[randomised] = rng.integers(NUM_SPECIAL, vocab_size, len(randomised))
    counts = {"targets": len(targets), "candidates": len(positions), "mask": len(masked),
              "random": len(randomised), "keep": len(targets) - len(masked) - len(randomised)}
    return inputs, labels, counts


def _ids_text(ids: Iterable[int]) -> str:
    return "[" + ", ".join(map(str, ids)) + "]"


# --------------------------------------------------------------------------------------------------
# prepare_pretraining_data: documents -> tokenizer, train.csv, test.csv, stats.json
# --------------------------------------------------------------------------------------------------


def _documents_factory(documents, text_files) -> tuple[Callable[[], Iterator[list]], dict]:
    from .corpus import make_source

    if documents is None:
        return make_source(text_files=text_files)
    if callable(documents):
        return documents, {"name": "documents", "source": "given in Python", "license": "unknown"}
    documents = list(documents)
    return (lambda: iter(documents)), {"name": "documents", "source": "given in Python", "license": "unknown"}


def _remove_stale_temporaries(output_dir: Path) -> None:
    """Remove ``.prepare-tmp-<pid>`` folders left by runs that were killed (their process no longer exists)."""
    for folder in output_dir.glob(".prepare-tmp-*"):
        try:
            pid = int(folder.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue


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


def prepare_pretraining_data(
    output_dir,
    text_files=None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
    mlm_probability: float = 0.15,
    test_size: float = DEFAULT_TEST_SIZE,
    seed: int = DEFAULT_SEED,
    tokenizer=None,
    dupe_factor: int = 1,
    show_progress: bool = True,
    documents=None,
    source_info: dict | None = None,
    short_seq_prob: float = 0.1,
    window: int = DEFAULT_WINDOW,
    num_workers: int | None = None,
) -> dict:
    """Write ``train.csv``, ``test.csv``, ``tokenizer/`` and ``stats.json`` into ``output_dir``; return the stats.

    Source: ``documents`` (a list of documents, or a callable returning a fresh iterator of them; a document is a
    list of paragraphs), else ``text_files`` (one paragraph per line, blank line between documents), else the default
    corpus. ``tokenizer``: a tokenizer object or folder to use instead of training one with ``vocab_size``.

    Everything is written under a temporary name inside ``output_dir`` and moved into place at the end, so an
    interrupted or failed run leaves no ``train.csv`` behind. Documents are streamed in windows of ``window``
    documents, so memory stays flat in the corpus size; NSP negatives come from other documents of the same
    window and split. Windows are processed by ``num_workers`` processes (default: one per core, up to 4; 0 =
    inline); each window has its own seeded generator, so the output is the same for any number of workers.
    """
    started = time.perf_counter()
    cpu_started = _cpu_seconds()
    if int(max_seq_length) < 8:
        raise MiniBertInputError(f"max_seq_length must be at least 8, got {max_seq_length}")
    if not 0.0 < float(mlm_probability) < 1.0:
        raise MiniBertInputError(f"mlm_probability must be between 0 and 1, got {mlm_probability}")
    if not 0.0 <= float(test_size) < 1.0:
        raise MiniBertInputError(f"test_size must be in [0, 1), got {test_size}")
    if int(dupe_factor) < 1:
        raise MiniBertInputError(f"dupe_factor must be at least 1, got {dupe_factor}")
    max_seq_length, dupe_factor = int(max_seq_length), int(dupe_factor)

    open_documents, info = _documents_factory(documents, text_files)
    if source_info:
        info = {**info, **source_info}

    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(output_dir)
        tmp = output_dir / f".prepare-tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as error:
        raise MiniBertInputError(f"cannot write the output folder: {error.strerror}", file=output_dir) from None

    try:
        # 1. tokenizer
        t0 = time.perf_counter()
        if tokenizer is None:
            first_pass = open_documents()
            if show_progress:
                from tqdm.auto import tqdm

                total = len(first_pass) if hasattr(first_pass, "__len__") else None
                first_pass = tqdm(first_pass, total=total, unit="doc", desc="tokenizer", mininterval=1.0)
            tokenizer = train_tokenizer(
                (p for doc in first_pass for p in doc),
                vocab_size=vocab_size,
                model_max_length=max_seq_length,
                show_progress=False,
            )
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
        counts = _write_pairs(
            open_documents(), tokenizer, tmp, max_seq_length, float(mlm_probability), float(test_size),
            int(seed), dupe_factor, short_seq_prob, int(window), show_progress, num_workers,
        )
        pairs_seconds = time.perf_counter() - t1

        if counts["documents"] < 2 or counts["pairs"]["train"] == 0:
            raise MiniBertInputError(
                f"too little text to make a sentence pair: found {counts['documents']} document(s) with "
                f"{counts['sentences']} sentence(s); need at least 2 documents (separate documents with a blank "
                "line) with enough text",
                file=info.get("source") if info.get("name") == "text files" else None,
            )
        if len(tokenizer) > 0 and counts["tokens"] == 0:
            raise MiniBertInputError("no tokens after tokenisation", file=info.get("source"))

        total_seconds = time.perf_counter() - started
        cpu_seconds = _cpu_seconds() - cpu_started
        masker_counts = counts.pop("masking")
        targets = max(1, masker_counts["targets"])
        stats = {
            "source": info.get("source"),
            "license": info.get("license"),
            "corpus": info.get("name"),
            **({"source_url": info["url"]} if "url" in info else {}),
            **({"license_url": info["license_url"]} if "license_url" in info else {}),
            "documents": counts["documents"],
            "documents_train": counts["documents_split"]["train"],
            "documents_test": counts["documents_split"]["test"],
            "sentences": counts["sentences"],
            "tokens": counts["tokens"],
            "raw_bytes": counts["raw_bytes"],
            "pairs": counts["pairs"]["train"] + counts["pairs"]["test"],
            "pairs_train": counts["pairs"]["train"],
            "pairs_test": counts["pairs"]["test"],
            "row_tokens": counts["row_tokens"],
            "mean_row_length": round(counts["row_tokens"] / max(1, counts["pairs"]["train"] + counts["pairs"]["test"]), 2),
            "target_fraction": round(masker_counts["targets"] / max(1, masker_counts["candidates"]), 5),
            "mask_fraction": round(masker_counts["mask"] / targets, 5),
            "random_fraction": round(masker_counts["random"] / targets, 5),
            "keep_fraction": round(masker_counts["keep"] / targets, 5),
            "nsp_is_next_fraction": round(counts["is_next"] / max(1, counts["pairs"]["train"] + counts["pairs"]["test"]), 5),
            "vocab_size": len(tokenizer),
            "tokenizer_trained": tokenizer_trained,
            "max_seq_length": max_seq_length,
            "mlm_probability": float(mlm_probability),
            "test_size": float(test_size),
            "dupe_factor": dupe_factor,
            "seed": int(seed),
            "seconds_tokenizer": round(tokenizer_seconds, 3),
            "seconds_pairs": round(pairs_seconds, 3),
            "seconds_total": round(total_seconds, 3),
            "mb_per_second": round(counts["raw_bytes"] / 1e6 / max(total_seconds, 1e-9), 3),
            "cpu_seconds": round(cpu_seconds, 3),
            "mb_per_cpu_second": round(counts["raw_bytes"] / 1e6 / max(cpu_seconds, 1e-9), 3),
        }
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")

        # 3. move into place: the CSVs last, so train.csv exists only when everything else does
        final_tokenizer = output_dir / "tokenizer"
        if final_tokenizer.exists():
            shutil.rmtree(final_tokenizer)
        os.replace(tmp / "tokenizer", final_tokenizer)
        os.replace(tmp / "stats.json", output_dir / "stats.json")
        os.replace(tmp / "test.csv", output_dir / "test.csv")
        os.replace(tmp / "train.csv", output_dir / "train.csv")
        return stats
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_WORKER: dict = {}


def _init_worker(tokenizer_json: str, params: dict) -> None:
    from tokenizers import Tokenizer

    _WORKER["backend"] = Tokenizer.from_str(tokenizer_json)
    _WORKER["params"] = params


def _process_window(job) -> tuple[str, dict]:
    """Split, tokenise, pair and mask one window of documents; return its CSV rows (text) and counts.

    Runs in a worker process or inline. Its random generator is seeded from (seed, split, window number) only, so
    the output does not depend on how many processes run."""
    import io

    from .corpus import split_sentences

    split, window_number, texts, spare = job
    backend, params = _WORKER["backend"], _WORKER["params"]
    rng = random.Random(f"{params['seed']}/{split}/{window_number}")
    np_rng = np.random.default_rng([int(params["seed"]) & 0xFFFFFFFF, 1 if split == "test" else 0, window_number])
    builder = PairBuilder(params["max_seq_length"], rng, params["short_seq_prob"])
    counts = {"sentences": 0, "tokens": 0, "pairs": 0, "row_tokens": 0, "is_next": 0}

    def tokenise(documents):
        sentence_docs = [[s for paragraph in doc for s in split_sentences(paragraph)] for doc in documents]
        flat = [s for doc in sentence_docs for s in doc]
        encodings = backend.encode_batch_fast(flat, add_special_tokens=False) if flat else []
        ids_docs, text_docs, k = [], [], 0
        for doc in sentence_docs:
            ids_doc, text_doc = [], []
            for text in doc:
                ids = encodings[k].ids
                k += 1
                if ids:
                    ids_doc.append(ids)
                    text_doc.append(text)
            ids_docs.append(ids_doc)
            text_docs.append(text_doc)
        return sentence_docs, ids_docs, text_docs

    sentence_docs, ids_docs, text_docs = tokenise(texts)
    counts["sentences"] = sum(len(d) for d in sentence_docs)
    counts["tokens"] = sum(len(s) for d in ids_docs for s in d)
    pool_docs, pool_texts = ids_docs, text_docs
    if spare and sum(1 for d in ids_docs if d) < 2:
        _, spare_ids, spare_texts = tokenise(spare)
        pool_docs, pool_texts = ids_docs + spare_ids, text_docs + spare_texts
    pool = [i for i, d in enumerate(pool_docs) if d]

    rows, meta = [], []
    for _ in range(params["dupe_factor"]):
        for d in range(len(ids_docs)):
            if not ids_docs[d]:
                continue
            for tokens_a, tokens_b, random_next, a_span, b_ref in builder.pairs_from_document(d, pool_docs, pool):
                rows.append([CLS_ID, *tokens_a, SEP_ID, *tokens_b, SEP_ID])
                meta.append((len(tokens_a), len(tokens_b), random_next, a_span, b_ref))
    if not rows:
        counts["masking"] = {"targets": 0, "candidates": 0, "mask": 0, "random": 0, "keep": 0}
        return "", counts
    inputs, labels, counts["masking"] = mask_rows(rows, params["vocab_size"], params["mlm_probability"], np_rng)
    inputs, labels = inputs.tolist(), labels.tolist()

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    offset = 0
    text_limit = 50 * params["max_seq_length"]  # characters of Original Text per side
    for (len_a, len_b, random_next, a_span, b_ref) in meta:
        end = offset + len_a + len_b + 3
        segments = "1," * (len_a + 2) + "2," * (len_b + 1)
        text_a = " ".join(pool_texts[a_span[0]][a_span[1] : a_span[2] + 1])
        text_b = " ".join(pool_texts[b_ref[0]][b_ref[1] : b_ref[2] + 1])
        if len(text_a) > text_limit:  # a runaway "sentence" (no punctuation for pages): keep the CSV readable
            text_a = text_a[:text_limit] + " ..."
        if len(text_b) > text_limit:
            text_b = text_b[:text_limit] + " ..."
        writer.writerow((f"{text_a} [SEP] {text_b}", _ids_text(inputs[offset:end]), _ids_text(labels[offset:end]),
                         segments[:-1], 0 if random_next else 1))
        offset = end
        counts["is_next"] += 0 if random_next else 1
    counts["pairs"] = len(rows)
    counts["row_tokens"] = offset
    return buffer.getvalue(), counts


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


def _write_pairs(documents, tokenizer, folder, max_seq_length, mlm_probability, test_size, seed, dupe_factor,
                 short_seq_prob, window, show_progress, num_workers=None) -> dict:
    from collections import deque

    params = {
        "seed": seed, "max_seq_length": max_seq_length, "short_seq_prob": short_seq_prob,
        "vocab_size": len(tokenizer), "mlm_probability": mlm_probability, "dupe_factor": dupe_factor,
    }
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
            pool = multiprocessing.get_context(method).Pool(num_workers, _init_worker, (tokenizer_json, params))
        finally:
            gc.unfreeze()
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved
    else:
        _init_worker(tokenizer_json, params)
    pending: deque = deque()

    try:
        with open(folder / "train.csv", "w", encoding="utf-8", newline="") as train_file, \
                open(folder / "test.csv", "w", encoding="utf-8", newline="") as test_file:
            files = {"train": train_file, "test": test_file}
            for handle in files.values():
                csv.writer(handle).writerow(CSV_COLUMNS)

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
                if len(texts) < 2:
                    other = "train" if split == "test" else "test"
                    spare = previous[split] or previous[other] or (list(buffers[other]) or None)
                previous[split] = texts
                job = (split, windows[split], texts, spare)
                windows[split] += 1
                if pool is None:
                    collect(split, _process_window(job))
                    return
                pending.append((split, pool.apply_async(_process_window, (job,))))
                while len(pending) > 2 * num_workers:  # bounded: memory stays flat
                    done_split, result = pending.popleft()
                    collect(done_split, result.get())

            for index, document in enumerate(documents):
                split = "test" if test_size > 0 and _is_test(index, test_size) else "train"
                counts["documents"] += 1
                counts["documents_split"][split] += 1
                counts["raw_bytes"] += sum(len(p.encode("utf-8")) for p in document)
                buffers[split].append(document)
                if len(buffers[split]) >= window:
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
# Reading CSVs (ours and the course lab's) into a datasets.Dataset
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
    if vocab_size is not None and max(inputs.max(), labels.max()) >= vocab_size:
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


def _load_checked_csv(path: str, header, vocab_size, max_length, num_proc):
    import datasets

    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise MiniBertInputError(f"missing column (found: {', '.join(repr(h) for h in header)})",
                                     file=path, column=column)
    features = datasets.Features({name: datasets.Value("string") for name in header})
    if num_proc is None:
        num_proc = min(4, os.cpu_count() or 1) if os.path.getsize(path) > (64 << 20) else None
    try:
        raw = datasets.load_dataset(
            "csv", data_files=os.path.abspath(path), split="train", features=features,
            column_names=header, skiprows=1, na_filter=False, keep_default_na=False, encoding="utf-8",
        )
    except MiniBertInputError:
        raise
    except Exception as error:  # pandas/pyarrow parse errors arrive wrapped by datasets
        cause = error
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
        reason = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        if isinstance(cause, UnicodeDecodeError):
            reason = "not valid UTF-8 text (binary data?)"
        raise MiniBertInputError(f"cannot parse as CSV: {reason}", file=path) from None
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


# --------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------


def collate_batch(examples: Sequence[dict], pad_to_multiple_of: int | None = None) -> dict:
    """Pad a list of rows to the longest (optionally rounded up to a multiple) into batch-first long tensors:
    ``input_ids`` (pad 0), ``token_type_ids`` (pad 0), ``attention_mask`` (1 = real token), ``labels`` (pad -100,
    so padding is never a target) and ``next_sentence_label`` when the rows have it."""
    import torch

    if not examples:
        raise ValueError("collate_batch needs at least one example")
    rows = [np.asarray(e["input_ids"], dtype=np.int64) for e in examples]
    lengths = [len(r) for r in rows]
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    size = (len(rows), width)
    input_ids = np.full(size, PAD_ID, dtype=np.int64)
    token_type_ids = np.zeros(size, dtype=np.int64)
    attention_mask = np.zeros(size, dtype=np.int64)
    labels = np.full(size, -100, dtype=np.int64)
    has_types = "token_type_ids" in examples[0]
    has_labels = "labels" in examples[0]
    for i, (example, row, n) in enumerate(zip(examples, rows, lengths)):
        input_ids[i, :n] = row
        attention_mask[i, :n] = 1
        if has_types:
            token_type_ids[i, :n] = example["token_type_ids"]
        if has_labels:
            labels[i, :n] = example["labels"]
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "labels": torch.from_numpy(labels),
    }
    if "next_sentence_label" in examples[0]:
        batch["next_sentence_label"] = torch.tensor([int(e["next_sentence_label"]) for e in examples],
                                                    dtype=torch.long)
    return batch


class DynamicMasking:
    """A collator that draws fresh MLM masks every call (RoBERTa-style dynamic masking on top of our CSV rows).

    It collates with :func:`collate_batch`, restores the original tokens (input = label where label != -100), then
    picks each non-special, non-padding token as a target with probability ``mlm_probability`` (at least one per
    row), replacing 80% of targets by ``[MASK]``, 10% by a random non-special token and leaving 10% unchanged.

    With ``seed`` it has its own generator (offset by the DataLoader worker id, so workers differ); without, it uses
    torch's global generator (which the DataLoader seeds per worker).
    """

    def __init__(self, vocab_size: int, mlm_probability: float = 0.15, special_ids=SPECIAL_IDS, mask_id: int = MASK_ID,
                 seed: int | None = None, pad_to_multiple_of: int | None = None):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be between 0 and 1, got {mlm_probability}")
        self.vocab_size = int(vocab_size)
        self.mlm_probability = float(mlm_probability)
        self.special_ids = tuple(int(i) for i in special_ids)
        self.mask_id = int(mask_id)
        self.seed = seed
        self.pad_to_multiple_of = pad_to_multiple_of
        self._generator = None
        self._worker = None
        self._random_low = max(self.special_ids) + 1 if self.special_ids else 0

    def _rng(self):
        import torch

        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        if self._generator is None or worker != self._worker:
            self._generator = torch.Generator().manual_seed(int(self.seed) + worker + 1)
            self._worker = worker
        return self._generator

    def __call__(self, examples):
        import torch

        batch = collate_batch(examples, pad_to_multiple_of=self.pad_to_multiple_of)
        generator = self._rng()
        input_ids, labels = batch["input_ids"], batch["labels"]
        input_ids = torch.where(labels != -100, labels, input_ids)
        candidates = batch["attention_mask"].bool()
        for special in self.special_ids:
            candidates &= input_ids != special
        probabilities = torch.full(input_ids.shape, self.mlm_probability)
        targets = (torch.rand(input_ids.shape, generator=generator) < probabilities) & candidates
        # at least one target in every row that has a candidate
        empty = (~targets.any(dim=1)) & candidates.any(dim=1)
        if empty.any():
            scores = torch.rand(input_ids.shape, generator=generator).masked_fill(~candidates, -1.0)
            pick = scores.argmax(dim=1)
            rows = empty.nonzero(as_tuple=True)[0]
            targets[rows, pick[rows]] = True
        draw = torch.rand(input_ids.shape, generator=generator)
        masked = targets & (draw < 0.8)
        randomised = targets & (draw >= 0.8) & (draw < 0.9)
        random_tokens = torch.randint(self._random_low, self.vocab_size, input_ids.shape, generator=generator)
        new_inputs = input_ids.clone()
        new_inputs[masked] = self.mask_id
        new_inputs[randomised] = random_tokens[randomised]
        batch["input_ids"] = new_inputs
        batch["labels"] = torch.where(targets, input_ids, torch.full_like(input_ids, -100))
        return batch


def write_pretraining_csv(path, rows: Iterable[dict]) -> None:
    """Write rows in HF conventions (``input_ids, token_type_ids, labels, next_sentence_label``) as a seed-format CSV
    (the inverse of :func:`load_pretraining_csv`; handy for tests and for sharing data with the course lab)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            labels = [PAD_ID if x == -100 else int(x) for x in row["labels"]]
            writer.writerow(("", _ids_text(row["input_ids"]), _ids_text(labels),
                             ",".join(str(int(t) + 1) for t in row["token_type_ids"]),
                             1 - int(row["next_sentence_label"])))
    os.replace(tmp, path)
