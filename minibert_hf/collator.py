"""Batching: rows -> padded batch-first tensors (:func:`collate_batch`), and the one dynamic masker training runs.

:class:`DynamicMasker` draws fresh MLM masks for a collated batch (RoBERTa-style dynamic masking on top of the CSV's
rows). The training loop calls it on each micro-batch after seeding torch's generator from the micro-batch's
position in the data, so a resumed run and a run on more processes draw the same masks.
:func:`truncate_pairs` cuts a collated batch of ``[CLS] A [SEP] B [SEP]`` rows to a shorter length (the training
loop's short-row phase).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .tokenizer import MASK_ID, NUM_SPECIAL, PAD_ID


def collate_batch(examples: Sequence[dict], pad_to_multiple_of: int | None = None) -> dict:
    """Pad a list of rows to the longest (optionally rounded up to a multiple) into batch-first long tensors:
    ``input_ids`` (pad 0), ``token_type_ids`` (pad 0), ``attention_mask`` (1 = real token), ``labels`` (pad -100,
    so padding is never a target) and ``next_sentence_label`` when the rows have it."""
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


def truncate_pairs(batch: dict, max_length: int, pad_to_multiple_of: int | None = None) -> dict:
    """Cut each ``[CLS] A [SEP] B [SEP]`` row of a collated batch to at most ``max_length`` tokens.

    As BERT's ``truncate_seq_pair``, the longer sentence loses tokens until the pair fits (the shorter one keeps all
    of its tokens when it fits in half); A loses its first tokens and B its last, so the tokens on either side of
    the first ``[SEP]``, where "B follows A" shows most, stay. A row with one segment (``[CLS] A [SEP]``) keeps the
    end of A. Special tokens, labels, segment ids and the NSP label go with their tokens; rows that fit are
    unchanged. The width is the longest cut row (rounded up to ``pad_to_multiple_of``).
    """
    real = batch["attention_mask"].bool()  # (batch, seq)
    in_b = (batch["token_type_ids"] == 1) & real
    has_b = in_b.any(dim=1).long()
    a = ((~in_b & real).sum(dim=1) - 2).clamp(min=0)  # A's tokens, without [CLS] and its [SEP]
    b = (in_b.sum(dim=1) - has_b).clamp(min=0)  # B's tokens, without the last [SEP]
    budget = (max_length - 2 - has_b).clamp(min=0)  # room for A and B together
    fits = a + b <= budget
    a_kept = torch.where(fits, a, torch.minimum(a, torch.maximum(budget - budget // 2, budget - b)))
    b_kept = torch.where(fits, b, budget - a_kept)
    length = a_kept + b_kept + 2 + has_b  # (batch,)
    width = int(length.max())
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    j = torch.arange(width, device=length.device).expand(len(length), width)  # position in the cut row
    a_, a_kept_, b_kept_ = a[:, None], a_kept[:, None], b_kept[:, None]
    source = torch.where(j <= a_kept_, j + (a_ - a_kept_) * (j > 0), j + a_ - a_kept_)  # [CLS], A, its [SEP], B
    source = torch.where(j == a_kept_ + b_kept_ + 2, a_ + b[:, None] + 2, source)  # B's [SEP]
    keep = j < length[:, None]
    source = torch.where(keep, source, 0)
    cut = dict(batch)
    for key, pad in (("input_ids", PAD_ID), ("token_type_ids", 0), ("attention_mask", 0), ("labels", -100)):
        if key in batch:
            cut[key] = torch.where(keep, batch[key].gather(1, source), torch.full_like(source, pad))
    return cut


class DynamicMasker:
    """Fresh MLM targets for a collated batch: restore the original tokens, then draw new targets.

    Each non-special real token is a target with probability ``mlm_probability`` (at least one per row that has a
    candidate), replaced by ``[MASK]`` 80% of the time, by a random non-special token 10%, left unchanged 10%.
    With ``continuation_ids`` (the ids of word pieces that continue a word, ``##ing``; see
    :func:`~minibert_hf.tokenizer.continuation_ids`), whole words are drawn instead: a word's pieces are all
    targets or none (BERT's whole-word masking), each piece then replaced 80/10/10 on its own.
    Random numbers come from ``generator`` (default: torch's global generator, which the training loop seeds per
    micro-batch). ``mlm_probability`` may be changed between calls (a masking-rate schedule).
    """

    def __init__(self, vocab_size: int, mlm_probability: float = 0.15, continuation_ids=None):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be between 0 and 1, got {mlm_probability}")
        self.vocab_size, self.mlm_probability = int(vocab_size), float(mlm_probability)
        self.continues = None  # continues[id]: the piece continues the word before it
        if continuation_ids is not None:
            self.continues = torch.zeros(self.vocab_size, dtype=torch.bool)
            self.continues[torch.as_tensor(list(continuation_ids), dtype=torch.long)] = True

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        input_ids, labels = batch["input_ids"].cpu(), batch["labels"].cpu()
        original = torch.where(labels != -100, labels, input_ids)
        candidates = (original >= NUM_SPECIAL) & (batch["attention_mask"].cpu() == 1)
        scores = torch.rand(original.shape, generator=generator)
        if self.continues is None:  # every token is a word of its own
            word = torch.arange(original.shape[1]).expand_as(original)
        else:  # every piece takes the score of its word's first piece
            starts = ~(self.continues[original] & candidates)
            starts[:, 0] = True
            word = starts.long().cumsum(dim=1) - 1  # (batch, seq): word number within the row
            scores = scores.gather(1, word)
        scores = scores.masked_fill(~candidates, 2.0)
        targets = scores < self.mlm_probability
        first = scores.argmin(dim=1, keepdim=True)  # each row's best word is a target if the row has none
        targets |= ~targets.any(dim=1, keepdim=True) & candidates & (word == word.gather(1, first))
        choice = torch.rand(original.shape, generator=generator)
        random_ids = torch.randint(NUM_SPECIAL, self.vocab_size, original.shape, generator=generator)
        masked = torch.where(targets & (choice < 0.8), torch.full_like(original, MASK_ID), original)
        masked = torch.where(targets & (choice >= 0.8) & (choice < 0.9), random_ids, masked)
        device = batch["input_ids"].device
        return {**batch, "input_ids": masked.to(device),
                "labels": torch.where(targets, original, torch.full_like(original, -100)).to(device)}
