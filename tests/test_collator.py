"""Batching: collate_batch, and DynamicMasker, the one dynamic masker training runs."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from minibert_hf.collator import DynamicMasker, collate_batch, truncate_pairs
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


def test_whole_word_masking_masks_every_piece_of_a_word_or_none():
    examples = big_examples()
    pieces = set(range(5, 300, 3))  # ids that continue the word before them
    words = DynamicMasker(vocab_size=300, mlm_probability=0.3, continuation_ids=sorted(pieces))
    batch = collate_batch(examples)
    first, again = words(batch, torch.Generator().manual_seed(5)), words(batch, torch.Generator().manual_seed(5))
    assert torch.equal(first["labels"], again["labels"]) and torch.equal(first["input_ids"], again["input_ids"])
    tokens = DynamicMasker(vocab_size=300, mlm_probability=0.3)(batch, torch.Generator().manual_seed(5))
    width = first["input_ids"].shape[1]
    original = torch.tensor([e["original"] + [PAD_ID] * (width - len(e["original"])) for e in examples])
    targets, split_words, whole = first["labels"] != -100, 0, 0
    for row, chosen, by_token in zip(original.tolist(), targets.tolist(), (tokens["labels"] != -100).tolist()):
        assert any(chosen), "every row has a target"
        spans, start = [], None  # each word: its first piece and the continuation pieces after it
        for i, token in enumerate(row + [PAD_ID]):
            if token >= 5 and token in pieces and start is not None:
                continue
            if start is not None:
                spans.append((start, i))
            start = i if token >= 5 else None
        for a, b in spans:
            assert len(set(chosen[a:b])) == 1, (row[a:b], chosen[a:b])  # all the pieces of a word, or none
            if b - a > 1:
                whole += chosen[a]
                split_words += len(set(by_token[a:b])) > 1  # token masking splits words
        for i, token in enumerate(row):
            if token < 5:
                assert not chosen[i], "special tokens and padding are never targets"
    assert whole > 20 and split_words > 20
    labels, inputs = first["labels"], first["input_ids"]
    assert torch.equal(labels[targets], original[targets]) and torch.equal(inputs[~targets], original[~targets])
    assert abs(targets.sum().item() / (original >= 5).sum().item() - 0.3) < 0.03
    assert abs((inputs[targets] == MASK_ID).float().mean().item() - 0.8) < 0.03  # 80/10/10 piece by piece


def test_continuation_ids_are_the_tokenizers_word_pieces():
    from fixture_tokenizer import fixed_tokenizer, fixture_texts

    from minibert_hf.tokenizer import continuation_ids

    tokenizer = fixed_tokenizer(fixture_texts(Path(__file__).resolve().parent / "fixtures"), vocab_size=300)
    ids = continuation_ids(tokenizer)
    vocab = tokenizer.get_vocab()
    assert ids and ids == sorted(i for t, i in vocab.items() if t.startswith("##"))
    word = max((t for t in vocab if not t.startswith("##") and t.isalpha()), key=len)
    encoded = tokenizer(word + "qzx", add_special_tokens=False)["input_ids"]
    assert len(encoded) > 1 and encoded[0] not in ids and all(i in ids for i in encoded[1:])


def test_pad_to_multiple_of_keeps_a_width_that_already_is_one():
    assert collate_batch(EXAMPLES, pad_to_multiple_of=3)["input_ids"].shape == (2, 6)
    assert collate_batch(EXAMPLES, pad_to_multiple_of=4)["input_ids"].shape == (2, 8)


def _pair_row(a: int, b: int | None) -> dict:
    """[CLS] A [SEP] B [SEP] with A = 100, 101, ... and B = 200, 201, ... (b None: no B); ids divisible by 3 are
    targets."""
    ids = [CLS_ID, *range(100, 100 + a), SEP_ID] + ([] if b is None else [*range(200, 200 + b), SEP_ID])
    types = [0] * (a + 2) + ([] if b is None else [1] * (b + 1))
    return {"input_ids": ids, "token_type_ids": types, "labels": [x if x >= 100 and x % 3 == 0 else -100 for x in ids],
            "next_sentence_label": (a + (b or 0)) % 2}


def _bert_truncation(a: int, b: int | None, max_length: int) -> list[int]:
    """BERT's truncate_seq_pair, one token at a time: the longer sentence loses one (A its first, B its last)."""
    first, second = list(range(100, 100 + a)), None if b is None else list(range(200, 200 + b))
    room = max_length - 2 - (second is not None)
    while len(first) + len(second or []) > room:
        if second is None or len(first) > len(second):
            first.pop(0)
        else:
            second.pop()
    return [CLS_ID, *first, SEP_ID] + ([] if second is None else [*second, SEP_ID])


def test_truncate_pairs_cuts_the_longer_sentence_as_bert_does_and_keeps_what_fits():
    rng = random.Random(0)
    for _ in range(300):
        max_length = rng.randint(5, 40)
        shapes = [(rng.randint(0, 30), rng.choice([None, *range(30)])) for _ in range(4)]
        batch = collate_batch([_pair_row(a, b) for a, b in shapes])
        cut = truncate_pairs(batch, max_length, pad_to_multiple_of=rng.choice([None, 8]))
        lengths = cut["attention_mask"].sum(1).tolist()
        for row, ((a, b), n) in enumerate(zip(shapes, lengths)):
            expected = _bert_truncation(a, b, max_length)
            assert cut["input_ids"][row, :n].tolist() == expected
            assert cut["attention_mask"][row].tolist() == [1] * n + [0] * (cut["input_ids"].shape[1] - n)
            second = expected.index(SEP_ID) + 1  # B starts after A's [SEP]
            assert cut["token_type_ids"][row].tolist() == [0] * second + [1] * (n - second) + [0] * (
                cut["input_ids"].shape[1] - n)
            labels = cut["labels"][row]  # a target stays with its token, padding is never one
            assert labels[:n].tolist() == [x if x >= 100 and x % 3 == 0 else -100 for x in expected]
            assert (labels[n:] == -100).all() and (cut["input_ids"][row, n:] == PAD_ID).all()
        assert cut["next_sentence_label"].equal(batch["next_sentence_label"])
        width = cut["input_ids"].shape[1]
        assert width == max(lengths) or (width % 8 == 0 and width - max(lengths) < 8)
        fits = [i for i, n in enumerate(batch["attention_mask"].sum(1).tolist()) if n <= max_length]
        for row in fits:  # a row that fits is unchanged
            n = lengths[row]
            assert cut["input_ids"][row, :n].equal(batch["input_ids"][row, :n])
