"""prepare_pretraining_data: NSP pairs, static MLM masks, the split, the CSVs and stats.json of a corpus."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest

from minibert_hf.errors import MiniBertInputError
from minibert_hf.pretraining_csv import CSV_COLUMNS, load_pretraining_csv
from minibert_hf.pretraining_data import prepare_pretraining_data
from minibert_hf.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, train_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
MAX_LEN = 64
WORDS = (
    "amber basin cobalt drift ember fable garnet harbor island juniper kettle lantern meadow nectar orchard pebble "
    "quarry river saddle thistle umber valley willow yarrow zephyr anchor bramble cinder delta elm fern glade hollow "
    "ivory jasper kelp larch moss nimbus onyx prairie quill reed slate tundra vapor wharf alder birch cedar dune"
).split()
MARKER = re.compile(r"zx(\d+)y(\d+)")


def generated_documents(n_docs: int = 240, seed: int = 0) -> list[list[str]]:
    """Documents of 1-7 sentences; every sentence carries a marker zx<doc>y<sentence> so tests can tell where
    a sentence came from. Some documents have one sentence only (they can only make random pairs)."""
    rng = random.Random(seed)
    documents = []
    for d in range(n_docs):
        sentences = []
        for s in range(rng.choice([1, 3, 4, 5, 6, 7])):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
            words.insert(rng.randint(1, len(words)), f"zx{d}y{s}")
            sentences.append(words[0].capitalize() + " " + " ".join(words[1:]) + ".")
        # two paragraphs sometimes, to exercise paragraph handling
        if len(sentences) > 3:
            documents.append([" ".join(sentences[:2]), " ".join(sentences[2:])])
        else:
            documents.append([" ".join(sentences)])
    return documents


def read_rows(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = []
        for row in reader:
            rows.append({
                "text": row["Original Text"],
                "input": json.loads(row["BERT Input"]),
                "label": json.loads(row["BERT Label"]),
                "segment": [int(x) for x in row["Segment Label"].split(",")],
                "is_next": int(row["Is Next"]),
            })
        return rows


@pytest.fixture(scope="module")
def tokenizer():
    texts = [p for doc in generated_documents() for p in doc]
    for name in ("corpus.txt", "more_docs.txt"):
        texts += FIXTURES.joinpath(name).read_text(encoding="utf-8").splitlines()
    return train_tokenizer(texts, vocab_size=400, model_max_length=MAX_LEN)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("prepared")
    stats = prepare_pretraining_data(
        out, documents=generated_documents(), tokenizer=tokenizer, max_seq_length=MAX_LEN, test_size=0.1,
        seed=7, dupe_factor=3, show_progress=False, num_workers=0, window=60,
    )
    return out, stats, read_rows(out / "train.csv") + read_rows(out / "test.csv")


def original_tokens(row):
    return [label if label != PAD_ID else token for token, label in zip(row["input"], row["label"])]


# ---------------------------------------------------------------------------------------------- properties


def test_rows_are_cls_a_sep_b_sep_within_max_length(prepared):
    _, _, rows = prepared
    assert len(rows) > 500
    for row in rows:
        tokens = original_tokens(row)
        n = len(tokens)
        assert 5 <= n <= MAX_LEN
        assert len(row["input"]) == len(row["label"]) == len(row["segment"]) == n
        assert tokens[0] == CLS_ID and tokens[-1] == SEP_ID
        seps = [i for i, t in enumerate(tokens) if t == SEP_ID]
        assert len(seps) == 2
        first_sep = seps[0]
        assert 1 < first_sep < n - 2  # A and B both non-empty
        assert row["segment"] == [1] * (first_sep + 1) + [2] * (n - first_sep - 1)
        assert CLS_ID not in tokens[1:] and PAD_ID not in tokens and MASK_ID not in tokens


def test_target_fraction_and_80_10_10(prepared):
    _, stats, rows = prepared
    candidates = targets = masked = kept = randomised = 0
    for row in rows:
        tokens = original_tokens(row)
        candidates += sum(1 for t in tokens if t >= 5)
        for token, inp, label in zip(tokens, row["input"], row["label"]):
            if label == PAD_ID:
                assert inp == token
                continue
            targets += 1
            assert label >= 5, "a special token is never a target"
            if inp == MASK_ID:
                masked += 1
            elif inp == label:
                kept += 1
            else:
                assert inp >= 5, "random replacements are never special tokens"
                randomised += 1
    assert abs(targets / candidates - 0.15) <= 0.015
    assert abs(masked / targets - 0.8) <= 0.03
    assert abs(randomised / targets - 0.1) <= 0.03
    assert abs(kept / targets - 0.1) <= 0.03
    assert stats["target_fraction"] == pytest.approx(targets / candidates, abs=1e-4)


def test_nsp_balance_and_negatives_never_the_true_next(prepared):
    _, stats, rows = prepared
    is_next = [row["is_next"] for row in rows]
    assert abs(sum(is_next) / len(is_next) - 0.5) <= 0.05
    assert stats["nsp_is_next_fraction"] == pytest.approx(sum(is_next) / len(is_next), abs=1e-5)
    assert stats["mean_row_length"] == pytest.approx(sum(len(row["input"]) for row in rows) / len(rows), abs=0.01)
    negatives = positives = 0
    for row in rows:
        text_a, text_b = row["text"].split(" [SEP] ")
        a = [(int(d), int(s)) for d, s in MARKER.findall(text_a)]
        b = [(int(d), int(s)) for d, s in MARKER.findall(text_b)]
        assert a and b
        if row["is_next"]:
            positives += 1
            assert {d for d, _ in b} == {a[0][0]}
            assert b[0][1] == a[-1][1] + 1, "B starts right after A"
        else:
            negatives += 1
            assert a[0][0] not in {d for d, _ in b}, "a random B comes from another document"
    assert negatives > 100 and positives > 100


def test_split_is_by_document_and_stats(prepared):
    out, stats, _ = prepared
    train_docs = {int(d) for row in read_rows(out / "train.csv") for d, _ in MARKER.findall(row["text"].split(" [SEP] ")[0])}
    test_docs = {int(d) for row in read_rows(out / "test.csv") for d, _ in MARKER.findall(row["text"].split(" [SEP] ")[0])}
    assert test_docs and train_docs and not (train_docs & test_docs)
    assert len(test_docs) <= 24 and len(test_docs) >= 15  # 10% of 240 documents (minus one-sentence ones)
    saved = json.loads((out / "stats.json").read_text())
    assert saved == stats
    for key in ("source", "license", "documents", "pairs", "tokens", "target_fraction", "nsp_is_next_fraction",
                "seconds_total"):
        assert key in saved
    assert saved["documents"] == 240
    assert saved["pairs"] == saved["pairs_train"] + saved["pairs_test"]
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())


@pytest.mark.parametrize("n_docs, options", [(3, dict(test_size=0.5)), (40, dict(test_size=0.2, window=1))])
def test_training_rows_never_hold_held_out_text(tmp_path, tokenizer, n_docs, options):
    """Not in sentence A, nor as a random sentence B: windows of one document take their NSP negatives from their
    own split."""
    prepare_pretraining_data(tmp_path / "out", documents=generated_documents(n_docs, seed=5), tokenizer=tokenizer,
                             max_seq_length=MAX_LEN, show_progress=False, num_workers=0, **options)
    docs = {split: {int(d) for row in read_rows(tmp_path / "out" / f"{split}.csv")
                    for d, _ in MARKER.findall(row["text"].split(" [SEP] ")[0])} for split in ("train", "test")}
    in_train_b = {int(d) for row in read_rows(tmp_path / "out" / "train.csv")
                  for d, _ in MARKER.findall(row["text"].split(" [SEP] ")[1])}
    assert docs["test"] and docs["train"] and not (docs["train"] & docs["test"])
    assert not (in_train_b & docs["test"]), in_train_b & docs["test"]


def test_dupe_factor_gives_different_masks_and_pairings_to_the_training_split_only(tmp_path, tokenizer):
    docs = generated_documents(60, seed=3)
    one = prepare_pretraining_data(tmp_path / "one", documents=docs, tokenizer=tokenizer, max_seq_length=MAX_LEN,
                                   test_size=0.2, dupe_factor=1, show_progress=False, num_workers=0)
    two = prepare_pretraining_data(tmp_path / "two", documents=docs, tokenizer=tokenizer, max_seq_length=MAX_LEN,
                                   test_size=0.2, dupe_factor=2, show_progress=False, num_workers=0)
    assert 1.6 * one["pairs_train"] <= two["pairs_train"] <= 2.4 * one["pairs_train"]
    rows = read_rows(tmp_path / "two" / "train.csv")
    assert len({json.dumps(r["input"]) for r in rows}) > 0.9 * len(rows)
    # The held-out pairs are made once: the same test set whatever the training split's dupe factor.
    assert one["pairs_test"] == two["pairs_test"] > 0
    assert (tmp_path / "one" / "test.csv").read_bytes() == (tmp_path / "two" / "test.csv").read_bytes()


def test_same_seed_gives_byte_identical_csvs_any_worker_count(tmp_path, tokenizer):
    docs = generated_documents(120, seed=5)
    kwargs = dict(documents=docs, tokenizer=tokenizer, max_seq_length=MAX_LEN, test_size=0.2, show_progress=False,
                  window=25)
    prepare_pretraining_data(tmp_path / "a", seed=11, num_workers=0, **kwargs)
    prepare_pretraining_data(tmp_path / "b", seed=11, num_workers=2, **kwargs)
    prepare_pretraining_data(tmp_path / "c", seed=12, num_workers=0, **kwargs)
    for name in ("train.csv", "test.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.csv").read_bytes() != (tmp_path / "c" / "train.csv").read_bytes()


def test_the_word_cache_changes_no_byte_of_the_csvs(tmp_path, tokenizer, monkeypatch):
    """The preparation encodes sentences through `SentenceEncoder`'s word cache; with the tokenizers library alone
    the CSVs are the same bytes, texts the cache leaves to the library included."""
    from minibert_hf import pairs
    from minibert_hf.tokenizer import SentenceEncoder

    docs = generated_documents(120, seed=5) + [
        ["Ünïcödé café opened in 1999. It's 3.14 -- isn't it?", "The snake_case name stayed. Tabs\tand all."],
        ["A [MASK] token and a [sep] sit here. CamelCase Words, (e.g.) these!", "The end came soon. It was late."],
    ]
    kwargs = dict(documents=docs, tokenizer=tokenizer, max_seq_length=MAX_LEN, test_size=0.2, show_progress=False,
                  window=25, seed=3, num_workers=0)
    prepare_pretraining_data(tmp_path / "cached", **kwargs)
    _, encoder = pairs._backend(tokenizer.backend_tokenizer.to_str())
    assert encoder.fast and "snake" in encoder.cache  # the cache did the work

    class LibraryOnly(SentenceEncoder):
        def __init__(self, backend):
            super().__init__(backend)
            self.fast = False

    monkeypatch.setattr(pairs, "SentenceEncoder", LibraryOnly)
    pairs._backend.cache_clear()
    try:
        prepare_pretraining_data(tmp_path / "library", **kwargs)
    finally:
        pairs._backend.cache_clear()
    for name in ("train.csv", "test.csv"):
        assert (tmp_path / "cached" / name).read_bytes() == (tmp_path / "library" / name).read_bytes()


def test_the_tokenizer_trains_on_a_seeded_sample_of_a_large_corpus(tmp_path):
    """With --tokenizer-sample-mb below the corpus's size the tokenizer trains on about that share of the
    documents, the same ones for the same seed; a cap above the size, or 0, gives it every document."""
    from minibert_hf.pretraining_data import PreparationOptions, tokenizer_documents

    docs = generated_documents(400)
    chars = sum(len(p) for doc in docs for p in doc)

    def drawn(cap_share, seed=1, text_files=None):
        options = PreparationOptions(tokenizer_sample_mb=cap_share * chars / 1e6, seed=seed)
        chosen, fraction = tokenizer_documents(options, lambda: iter(docs), text_files)
        return [docs.index(doc) for doc in chosen], fraction

    assert drawn(0) == (list(range(400)), 1.0) and drawn(2.0) == (list(range(400)), 1.0)
    sample, fraction = drawn(0.25)
    assert fraction == pytest.approx(0.25) and 60 <= len(sample) <= 140  # about a quarter, in corpus order
    assert sample == sorted(sample) and drawn(0.25) == (sample, fraction) and drawn(0.25, seed=2)[0] != sample
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
    assert drawn(0.25, text_files=[str(corpus)])[1] == pytest.approx(0.25 * chars / corpus.stat().st_size)

    kwargs = dict(documents=docs, vocab_size=3000, max_seq_length=MAX_LEN, show_progress=False, num_workers=0)
    whole = prepare_pretraining_data(tmp_path / "whole", **kwargs)
    tenth = prepare_pretraining_data(tmp_path / "tenth", **kwargs, tokenizer_sample_mb=chars * 0.1 / 1e6)
    assert whole["tokenizer_sample_fraction"] == 1.0 and tenth["tokenizer_sample_fraction"] == pytest.approx(0.1)
    assert tenth["vocab_size"] < whole["vocab_size"]  # a tenth of the text holds fewer distinct pieces
    with pytest.raises(MiniBertInputError, match="--tokenizer-sample-mb"):
        prepare_pretraining_data(tmp_path / "bad", **kwargs, tokenizer_sample_mb=-1)

def test_text_files_source_and_mlm_probability(tmp_path, tokenizer):
    files = [FIXTURES / "corpus.txt", FIXTURES / "more_docs.txt"]
    stats = prepare_pretraining_data(tmp_path, text_files=files, tokenizer=tokenizer,
                                     max_seq_length=MAX_LEN, mlm_probability=0.3, test_size=0.1,
                                     show_progress=False, num_workers=0)
    assert stats["documents"] == 39 + 12
    assert stats["pairs_test"] > 0
    assert abs(stats["target_fraction"] - 0.3) < 0.03
    assert stats["source"] == "corpus.txt, more_docs.txt"  # file names only: stats feed a card made for the Hub


def test_trained_tokenizer_is_saved_and_used(tmp_path):
    stats = prepare_pretraining_data(tmp_path, text_files=[FIXTURES / "corpus.txt"], vocab_size=300,
                                     max_seq_length=MAX_LEN, show_progress=False, num_workers=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert len(tok) == stats["vocab_size"] <= 300 and stats["tokenizer_trained"]
    assert tok.model_max_length == MAX_LEN
    ids = set(i for r in read_rows(tmp_path / "train.csv") for i in r["input"])
    assert max(ids) < len(tok)


@pytest.mark.parametrize(
    "documents, fragment",
    [
        ([["Only one sentence here."]], "too little text"),
        ([["First sentence of the only document. And a second one follows it."]], "at least 2 documents"),
        ([], "too little text"),
    ],
)
def test_too_little_text_is_a_clear_error_and_leaves_nothing(tmp_path, tokenizer, documents, fragment):
    with pytest.raises(MiniBertInputError, match=fragment):
        prepare_pretraining_data(tmp_path / "out", documents=documents, tokenizer=tokenizer, show_progress=False,
                                 num_workers=0)
    assert not (tmp_path / "out" / "train.csv").exists()
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------------------------- reading CSVs


def test_our_csv_reads_back_in_hf_conventions(prepared):
    out, _, _ = prepared
    rows = read_rows(out / "test.csv")
    dataset = load_pretraining_csv(out / "test.csv", vocab_size=400, max_length=MAX_LEN)
    assert dataset.column_names == ["input_ids", "token_type_ids", "labels", "next_sentence_label"]
    assert len(dataset) == len(rows)
    for row, example in zip(rows, dataset):
        assert example["input_ids"] == row["input"]
        assert example["token_type_ids"] == [s - 1 for s in row["segment"]]
        assert example["labels"] == [l if l else -100 for l in row["label"]]
        assert example["next_sentence_label"] == 1 - row["is_next"]


def test_small_corpus_still_gets_a_test_split(tmp_path, tokenizer):
    docs = generated_documents(6, seed=9)
    stats = prepare_pretraining_data(tmp_path, documents=docs, tokenizer=tokenizer, max_seq_length=MAX_LEN,
                                     test_size=0.05, show_progress=False, num_workers=0)
    assert stats["documents_test"] == 1 and stats["pairs_test"] > 0 and stats["pairs_train"] > 0
    assert len(load_pretraining_csv(tmp_path / "test.csv")) == stats["pairs_test"]


def test_a_huge_sentence_is_truncated_quickly(tmp_path, tokenizer):
    docs = [[" ".join(["amber"] * 50_000) + "."], ["Basin cobalt drift. Ember fable garnet."],
            ["Harbor island juniper. Kettle lantern meadow."]]
    stats = prepare_pretraining_data(tmp_path, documents=docs, tokenizer=tokenizer, max_seq_length=MAX_LEN,
                                     test_size=0.0, show_progress=False, num_workers=0)
    rows = read_rows(tmp_path / "train.csv")
    assert stats["tokens"] > 50_000 and all(len(r["input"]) <= MAX_LEN for r in rows)


def test_leftovers_of_a_killed_run_are_cleaned(tmp_path, tokenizer):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".tmp-prepare.pid{int(dead.stdout)}"
    (stale / "tokenizer").mkdir(parents=True)
    (stale / "train.csv").write_text("partial")
    prepare_pretraining_data(tmp_path, documents=generated_documents(20), tokenizer=tokenizer, max_seq_length=MAX_LEN,
                             show_progress=False, num_workers=0)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json", "test.csv", "tokenizer", "train.csv"]


# ---------------------------------------------------------------------------------------------- pairs and masks


def test_every_sentence_is_used_once_per_pass_as_a_or_its_true_next_b(prepared):
    """The sentences a random B leaves unused go back for the next pair: each sentence of a training document is
    in A or in a true-next B once per dupe-factor pass (3 here), each held-out one once."""
    from collections import Counter

    out, _, _ = prepared
    seen = {}
    for split in ("train", "test"):
        uses = Counter()
        for row in read_rows(out / f"{split}.csv"):
            text_a, text_b = row["text"].split(" [SEP] ")
            uses.update((int(d), int(s)) for d, s in MARKER.findall(text_a))
            if row["is_next"]:
                uses.update((int(d), int(s)) for d, s in MARKER.findall(text_b))
        seen[split] = uses
    test_docs = {d for d, _ in seen["test"]}
    for d, document in enumerate(generated_documents()):
        split, times = ("test", 1) if d in test_docs else ("train", 3)
        sentences = [(int(a), int(b)) for a, b in MARKER.findall(" ".join(document))]
        assert {s: seen[split][s] for s in sentences} == {s: times for s in sentences}, (split, d)


def test_truncation_is_longest_first_from_either_end():
    """A pair too long for the row loses tokens from its longer side only, from the front or the back at random."""
    from minibert_hf.pairs import PairBuilder

    short, long_next, other = [10, 11, 12], list(range(100, 140)), list(range(200, 240))
    documents = [[short, long_next], [other]]
    front_cuts = []
    for seed in range(40):
        builder = PairBuilder(16, random.Random(seed), short_seq_prob=0.0)  # 13 tokens for A and B
        pairs = list(builder.pairs_from_document(0, documents, [0, 1]))
        tokens_a, tokens_b = pairs[0][:2]
        assert tokens_a == short, "the shorter side is kept whole"
        assert len(tokens_b) == 13 - len(short) and tokens_b == list(range(tokens_b[0], tokens_b[0] + 10))
        front_cuts.append(tokens_b[0] - (100 if tokens_b[0] < 200 else 200))  # of the 30 cuts, those at the front
        for tokens_a, tokens_b, *_ in pairs[1:]:  # A of 40 tokens and B of 40: both cut to about half
            assert len(tokens_a) + len(tokens_b) == 13 and abs(len(tokens_a) - len(tokens_b)) <= 1
    assert 10 < sum(front_cuts) / len(front_cuts) < 20  # about half of them, on average


def test_short_seq_prob_shortens_the_rows(tmp_path, tokenizer):
    docs = generated_documents(60, seed=4)
    kwargs = dict(documents=docs, tokenizer=tokenizer, max_seq_length=MAX_LEN, test_size=0.0, show_progress=False,
                  num_workers=0)
    full = prepare_pretraining_data(tmp_path / "full", short_seq_prob=0.0, **kwargs)
    short = prepare_pretraining_data(tmp_path / "short", short_seq_prob=1.0, **kwargs)
    assert short["mean_row_length"] < 0.8 * full["mean_row_length"]


def test_the_seed_draws_the_pairings_not_only_the_masks(tmp_path, tokenizer):
    docs = generated_documents(60, seed=4)
    kwargs = dict(documents=docs, tokenizer=tokenizer, max_seq_length=MAX_LEN, test_size=0.0, show_progress=False,
                  num_workers=0)
    texts = {}
    for seed in (1, 2):
        prepare_pretraining_data(tmp_path / str(seed), seed=seed, **kwargs)
        texts[seed] = [row["text"] for row in read_rows(tmp_path / str(seed) / "train.csv")]
    assert texts[1] != texts[2]


def test_nsp_negatives_come_from_the_same_window(tmp_path, tokenizer):
    """Windows of `window` documents: a random B comes from another document of A's window, never a later one."""
    prepare_pretraining_data(tmp_path, documents=generated_documents(40, seed=6), tokenizer=tokenizer,
                             max_seq_length=MAX_LEN, test_size=0.0, window=4, show_progress=False, num_workers=0)
    negatives = 0
    for row in read_rows(tmp_path / "train.csv"):
        if row["is_next"]:
            continue
        negatives += 1
        text_a, text_b = row["text"].split(" [SEP] ")
        doc_a = int(MARKER.search(text_a).group(1))
        assert {int(d) // 4 for d, _ in MARKER.findall(text_b)} == {doc_a // 4}, row["text"]
    assert negatives > 20


def test_stats_mask_random_keep_fractions_match_the_rows(prepared):
    """[MASK] targets are counted exactly; a random replacement that drew its own token looks kept in the rows."""
    _, stats, rows = prepared
    targets = masked = kept = randomised = 0
    for row in rows:
        for inp, label in zip(row["input"], row["label"]):
            if label != PAD_ID:
                targets += 1
                masked += inp == MASK_ID
                kept += inp == label
                randomised += inp not in (MASK_ID, label)
    assert stats["mask_fraction"] + stats["random_fraction"] + stats["keep_fraction"] == pytest.approx(1, abs=1e-4)
    assert stats["mask_fraction"] * targets == pytest.approx(masked, abs=0.5)
    drew_own_token = stats["random_fraction"] * targets - randomised
    assert -0.5 <= drew_own_token <= 0.03 * randomised
    assert stats["keep_fraction"] * targets == pytest.approx(kept - drew_own_token, abs=0.5)


def test_mask_rows_gives_every_row_a_target_and_rounds_the_rate_stochastically():
    """15% of 10 candidates is 1.5 targets a row on average (1 or 2, not always 1); a row of 2 candidates still
    gets its one target."""
    import numpy as np

    from minibert_hf.pairs import mask_rows

    rows = [[CLS_ID, *range(5, 15), SEP_ID] for _ in range(2000)]
    inputs, labels, counts = mask_rows(rows, 400, 0.15, np.random.default_rng(0))
    per_row = (labels.reshape(len(rows), -1) != PAD_ID).sum(axis=1)
    assert set(per_row.tolist()) == {1, 2} and abs(per_row.mean() - 1.5) < 0.05
    assert counts["targets"] == per_row.sum() and counts["candidates"] == 10 * len(rows)
    rows = [[CLS_ID, 7, SEP_ID, 8, SEP_ID] for _ in range(500)]
    inputs, labels, counts = mask_rows(rows, 400, 0.15, np.random.default_rng(1))
    assert ((labels.reshape(len(rows), -1) != PAD_ID).sum(axis=1) == 1).all()


def test_mask_rows_candidates_are_exactly_the_non_special_tokens():
    """Every id from NUM_SPECIAL up may be a target (the first word id too); special ids never are."""
    import numpy as np

    from minibert_hf.pairs import mask_rows
    from minibert_hf.tokenizer import NUM_SPECIAL, UNK_ID

    rows = [[CLS_ID, NUM_SPECIAL, UNK_ID, NUM_SPECIAL, SEP_ID, NUM_SPECIAL, SEP_ID] for _ in range(300)]
    inputs, labels, counts = mask_rows(rows, 400, 0.3, np.random.default_rng(0))
    tokens = np.array(rows).ravel()
    assert counts["candidates"] == 3 * len(rows)
    assert (labels[labels != PAD_ID] == NUM_SPECIAL).all()
    assert (labels.reshape(len(rows), -1) != PAD_ID).any(axis=1).all(), "every row has a target"
    assert (inputs[tokens < NUM_SPECIAL] == tokens[tokens < NUM_SPECIAL]).all()


def test_mask_rows_random_replacements_are_any_non_special_id():
    """With a vocabulary of 3 word ids, the random replacements of id 5 show up as 6 and 7 (both, only those)."""
    import numpy as np

    from minibert_hf.pairs import mask_rows
    from minibert_hf.tokenizer import NUM_SPECIAL

    rows = [[CLS_ID, *[NUM_SPECIAL] * 20, SEP_ID] for _ in range(1000)]
    inputs, labels, counts = mask_rows(rows, NUM_SPECIAL + 3, 0.15, np.random.default_rng(0))
    targets = labels != PAD_ID
    replaced = set(inputs[targets & (inputs != MASK_ID) & (inputs != labels)].tolist())
    assert replaced == {NUM_SPECIAL + 1, NUM_SPECIAL + 2}
