"""Documents -> NSP sentence pairs with MLM masks -> CSV rows, one window of documents at a time.

:class:`PairBuilder` follows BERT's ``create_instances_from_document``; :func:`mask_rows` is BERT's static masking,
vectorised; :func:`process_window` runs both on a window of documents (in a worker process or inline) and returns
its CSV text, encoded by :func:`~minibert_hf.pretraining_csv.encode_rows`.
"""

from __future__ import annotations

import functools
import gc
import random
from itertools import chain
from typing import Sequence

import numpy as np

from .pretraining_csv import encode_rows
from .tokenizer import CLS_ID, MASK_ID, NUM_SPECIAL, SEP_ID, SentenceEncoder


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
    # pick `wanted[r]` candidates of row r uniformly: sort candidates by (row, random key), keep the first ones.
    # Row + key in [0, 1) as one number sorts the same way (rounding keeps the order; ties are as likely as two
    # keys of a row agreeing to 40 bits) and five times faster than np.lexsort on the two.
    order = np.argsort(row_of[positions] + rng.random(len(positions)), kind="stable")
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


@functools.lru_cache(maxsize=1)
def _backend(tokenizer_json: str):
    """The ``tokenizers`` backend of a serialised tokenizer and its `SentenceEncoder`, made once per process (the
    encoder's word cache then lasts across the windows a worker processes)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer_json)
    return backend, SentenceEncoder(backend)


def process_window(job) -> tuple[str, dict]:
    """Split, tokenise, pair and mask one window of documents; return its CSV rows (text) and counts.

    ``job = (options, tokenizer_json, split, window_number, texts, spare)``: the :class:`PreparationOptions`, the
    tokenizer serialised as JSON, "train"/"test", the window's number in its split, its documents, and documents
    of another window to draw NSP negatives from when this one has fewer than two. Runs in a worker process or
    inline; its random generators are seeded from (seed, split, window number) only, so the output does not depend
    on how many processes run.

    Python's cycle collector is paused meanwhile: a window allocates hundreds of thousands of lists (ids, rows)
    and no reference cycles, and the full collections that so many new objects set off cost up to half the time
    of the window they fall in.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _process_window(job)
    finally:
        if enabled:
            gc.enable()


def _process_window(job) -> tuple[str, dict]:
    from .corpus import split_sentences

    options, tokenizer_json, split, window_number, texts, spare = job
    backend, encode = _backend(tokenizer_json)
    rng = random.Random(f"{options.seed}/{split}/{window_number}")
    np_rng = np.random.default_rng([int(options.seed) & 0xFFFFFFFF, 1 if split == "test" else 0, window_number])
    builder = PairBuilder(options.max_seq_length, rng, options.short_seq_prob)
    counts = {"sentences": 0, "tokens": 0, "pairs": 0, "row_tokens": 0, "is_next": 0}

    def tokenise(documents):
        sentence_docs = [[s for paragraph in doc for s in split_sentences(paragraph)] for doc in documents]
        flat = [s for doc in sentence_docs for s in doc]
        encoded = encode(flat) if flat else []
        ids_docs, text_docs, k = [], [], 0
        for doc in sentence_docs:
            ids_doc, text_doc = [], []
            for text in doc:
                ids = encoded[k]
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
    for _ in range(options.dupe_factor if split == "train" else 1):  # held-out pairs are made once
        for d in range(len(ids_docs)):
            if not ids_docs[d]:
                continue
            for tokens_a, tokens_b, random_next, a_span, b_ref in builder.pairs_from_document(d, pool_docs, pool):
                rows.append([CLS_ID, *tokens_a, SEP_ID, *tokens_b, SEP_ID])
                meta.append((len(tokens_a), len(tokens_b), random_next, a_span, b_ref))
    if not rows:
        counts["masking"] = {"targets": 0, "candidates": 0, "mask": 0, "random": 0, "keep": 0}
        return "", counts
    inputs, labels, counts["masking"] = mask_rows(rows, backend.get_vocab_size(), options.mlm_probability, np_rng)

    texts = []
    text_limit = 50 * options.max_seq_length  # characters of Original Text per side
    for (len_a, len_b, random_next, a_span, b_ref) in meta:
        text_a = " ".join(pool_texts[a_span[0]][a_span[1] : a_span[2] + 1])
        text_b = " ".join(pool_texts[b_ref[0]][b_ref[1] : b_ref[2] + 1])
        if len(text_a) > text_limit:  # a runaway "sentence" (no punctuation for pages): keep the CSV readable
            text_a = text_a[:text_limit] + " ..."
        if len(text_b) > text_limit:
            text_b = text_b[:text_limit] + " ..."
        texts.append(f"{text_a} [SEP] {text_b}")
    sides = np.array([(len_a + 2, len_b + 1) for len_a, len_b, *_ in meta], dtype=np.int64)  # [CLS] A [SEP] | B [SEP]
    segments = np.repeat(np.tile(np.array([1, 2], dtype=np.int64), len(meta)), sides.ravel())
    is_next = [not random_next for _, _, random_next, _, _ in meta]
    counts["is_next"] = sum(is_next)
    counts["pairs"] = len(rows)
    counts["row_tokens"] = len(inputs)
    return encode_rows(texts, inputs, labels, segments, sides.sum(axis=1), is_next), counts
