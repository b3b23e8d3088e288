"""The TF-IDF + logistic regression reference: its features by hand, its penalty's scale, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from minibert_hf.baselines import TfidfFeatures, fit_logistic_regression, tfidf_logistic_regression
from minibert_hf.finetuning_data import Example, TextClassificationData, load_csv_dataset
from test_finetune import write_topic_csv
from test_inference import run_script


def test_tfidf_rows_by_hand():
    features = TfidfFeatures(["the cat sat", "the dog", "a cat"])  # "a" is one character: not a word
    assert list(features.vocabulary) == ["cat", "dog", "sat", "the"]
    idf = {word: math.log(4 / (1 + df)) + 1 for word, df in (("cat", 2), ("dog", 1), ("sat", 1), ("the", 2))}
    rows = features.transform(["The cat, the CAT and a dog", "unknown words only"]).to_dense()
    cat, dog, the = 2 * idf["cat"], idf["dog"], 2 * idf["the"]  # counts times idf, then the row scaled to length 1
    expected = torch.tensor([[cat, dog, 0, the], [0, 0, 0, 0]], dtype=torch.float64) / math.hypot(cat, dog, the)
    assert torch.allclose(rows, expected)


def test_the_penalty_weighs_against_c_times_the_summed_log_loss():
    # one feature, present in 3 texts of label 1 and absent from 3 of label 0: with a large C the classifier follows
    # it, with a tiny C the penalty keeps the weight near 0 and the intercept decides (the majority label, 1)
    features = torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0], [0.0], [0.0]], dtype=torch.float64).to_sparse()
    labels = torch.tensor([1, 1, 1, 0, 0, 1, 1])
    assert fit_logistic_regression(features, labels, 2, C=100.0)(features) == [1, 1, 1, 1, 1, 1, 1]
    # Labels 1 exactly where the feature is: at the optimum of C * (summed log loss) + w²/2 the texts with the
    # feature score w + b, and setting both derivatives to zero gives w = 3C·σ(-(w+b)) = 4C·σ(b). They flip to
    # label 1 where w + b = 0: σ(b) = 3/8, w = -b = ln(5/3), C = ln(5/3) / 1.5 = 0.3405. A loss averaged instead of
    # summed, or a penalty on two softmax columns (half the binary one), moves that point by 7x or 2x.
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    flip = math.log(5 / 3) / 1.5
    assert fit_logistic_regression(features, labels, 2, C=flip * 1.3)(features) == [1, 1, 1, 0, 0, 0, 0]
    assert fit_logistic_regression(features, labels, 2, C=flip / 1.3)(features) == [0] * 7
    # three labels: the softmax form, one weight vector per label
    three = torch.eye(3, dtype=torch.float64).repeat(2, 1).to_sparse()
    assert fit_logistic_regression(three, torch.tensor([0, 1, 2, 0, 1, 2]), 3, C=10.0)(three) == [0, 1, 2] * 2


def test_learns_the_topic_task_and_trains_on_the_validation_share_too(tmp_path):
    data = load_csv_dataset(write_topic_csv(tmp_path / "topics.csv"))
    result = tfidf_logistic_regression(data, C=10.0)
    assert result.accuracy == 1.0 and result.macro_f1 == 1.0 and (result.num_train, result.num_test) == (36, 12)
    held = TextClassificationData(data.train[:30], data.test, data.label_names, "t", validation=data.train[30:])
    assert tfidf_logistic_regression(held, C=10.0).num_train == 36


def test_cli_prints_each_seed_and_the_mean_and_writes_json(tmp_path):
    path = write_topic_csv(tmp_path / "topics.csv", with_split=False)
    proc = run_script("tfidf_baseline.py", "--dataset", path, "--seeds", "0", "1", "--C", "10",
                      "--results-json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert "seed 0: accuracy" in proc.stdout and "seed 1: accuracy" in proc.stdout
    assert "accuracy mean" in proc.stdout and "over 2 seed(s)" in proc.stdout
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [r["seed"] for r in saved] == [0, 1] and all(r["C"] == 10.0 for r in saved)
    bad = run_script("tfidf_baseline.py", "--dataset", path, "--C", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: --C must be positive, got 0.0"]


@pytest.mark.parametrize("label", [0, 1])
def test_a_single_class_training_set_predicts_that_class(label):
    data = TextClassificationData([Example("good fun", label), Example("more fun", label)],
                                  [Example("fun again", 1 - label)], ["rotten", "fresh"], "t")
    assert tfidf_logistic_regression(data).accuracy == 0.0
