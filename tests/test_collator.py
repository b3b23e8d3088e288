"""Batching: collate_batch, and DynamicMasker, the one dynamic masker training runs."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from minibert_hf.collator import DynamicMasker, collate_batch
from minibert_hf.pretraining_csv import load_pretraining_csv
from minibert_hf.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pretraining_csv import LAB_CSV  # noqa: E402




EXAMPLES = [
    {"input_ids": [1, 5, 6, 2, 7, 2], "token_type_ids": [0, 0, 0, 0, 1, 1], "labels": [-100, 5, -100, -100, -100, -100],
     "next_sentence_label": 0},
    {"input_ids": [1, 8, 2, 9, 2], "token_type_ids": [0, 0, 0, 1, 1], "labels": [-100, -100, -100, 9, -100],
     "next_sentence_label": 1},
]


def test_collate_batch_pads_to_longest_and_to_multiple():
    batch = collate_batch(EXAMPLES)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 7, 2], [1, 8, 2, 9, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1] * 5 + [0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]]
    assert batch["labels"].tolist()[1] == [-100, -100, -100, 9, -100, -100]
    assert batch["next_sentence_label"].tolist() == [0, 1]
    padded = collate_batch(EXAMPLES, pad_to_multiple_of=8)
    assert padded["input_ids"].shape == (2, 8)
    assert (padded["labels"][padded["attention_mask"] == 0] == -100).all()


def test_collate_batch_from_a_loaded_dataset(tmp_path):
    path = tmp_path / "lab.csv"
    path.write_text(LAB_CSV, encoding="utf-8")
    dataset = load_pretraining_csv(path)
    batch = collate_batch([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == (2, 10)
    assert batch["attention_mask"].sum().item() == 17


def big_examples(n=400, seed=0):
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        a, b = rng.randint(3, 30), rng.randint(3, 30)
        ids = [CLS_ID] + [rng.randrange(5, 300) for _ in range(a)] + [SEP_ID] + [rng.randrange(5, 300) for _ in range(b)] + [SEP_ID]
        labels = [-100] * len(ids)
        inputs = list(ids)
        for i in range(1, len(ids) - 1):  # a static mask as in our CSV
            if ids[i] >= 5 and rng.random() < 0.15:
                labels[i], inputs[i] = ids[i], MASK_ID
        examples.append({"input_ids": inputs, "token_type_ids": [0] * (a + 2) + [1] * (b + 1), "labels": labels,
                         "next_sentence_label": rng.randint(0, 1), "original": ids})
    return examples


@pytest.mark.parametrize("rate", [0.15, 0.3])  # the default, and make pretrain's starting rate
def test_dynamic_masking_restores_and_redraws(rate):
    examples = big_examples()
    masker, batch = DynamicMasker(vocab_size=300, mlm_probability=rate), collate_batch(examples)
    generator = torch.Generator().manual_seed(3)
    first = masker(batch, generator)
    second = masker(batch, generator)
    again = masker(batch, torch.Generator().manual_seed(3))
    assert torch.equal(first["input_ids"], again["input_ids"]), "seeded: reproducible"
    assert not torch.equal(first["labels"], second["labels"]), "fresh masks every call"
    width = first["input_ids"].shape[1]
    original = torch.tensor([e["original"] + [PAD_ID] * (width - len(e["original"])) for e in examples])
    for batch in (first, second):
        labels, inputs, attention = batch["labels"], batch["input_ids"], batch["attention_mask"]
        targets = labels != -100
        assert torch.equal(labels[targets], original[targets]), "labels are the original tokens"
        assert torch.equal(inputs[~targets], original[~targets]), "non-targets are restored"
        assert (original[targets] >= 5).all(), "special tokens and padding are never targets"
        assert not (targets & (attention == 0)).any()
        assert targets.any(dim=1).all(), "every row has a target"
        candidates = (original >= 5).sum().item()
        assert abs(targets.sum().item() / candidates - rate) < 0.1 * rate
        masked = (inputs[targets] == MASK_ID).float().mean().item()
        kept = (inputs[targets] == original[targets]).float().mean().item()
        assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.03
        assert (inputs[targets] >= 5).logical_or(inputs[targets] == MASK_ID).all()
