"""The references without fine-tuning: TF-IDF + logistic regression (its features by hand, its penalty's scale) and
the linear probe of a frozen encoder, and their CLIs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from minibert_hf import baselines
from minibert_hf.baselines import (TfidfFeatures, fit_logistic_regression, frozen_features, linear_probe,
                                   tfidf_logistic_regression)
from minibert_hf.finetuning import load_for_task
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


# ------------------------------------------------------------------------------------------ linear probe

TEXTS = ["the cat sat on the mat .", "a dog .", "the sun rose over the quiet hills and the rain fell ."]


@pytest.mark.usefixtures("one_thread")
def test_frozen_features_are_the_mean_of_each_texts_own_tokens_in_eval_mode(trained):
    # dropout 0.5 and a padded batch of three lengths: features taken in training mode, or averaged over the
    # padding, or read from [CLS] instead of the mean would not match each text encoded alone
    model, tokenizer = load_for_task(trained, 2, dropout=0.5, pooling="mean")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    classifier = model.classifier
    model.train()
    features = frozen_features(model, tokenizer, TEXTS, batch_size=2)
    assert features.dtype == torch.float64 and features.shape == (3, model.config.hidden_size)
    model.eval()
    with torch.no_grad():
        for row, text in enumerate(TEXTS):
            alone = model.minibert(**tokenizer(text, return_token_type_ids=True, return_tensors="pt"))
            assert torch.allclose(features[row], alone.last_hidden_state[0].mean(0).double(), atol=1e-5)
    assert model.classifier is classifier and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.train()
    frozen_features(model, tokenizer, TEXTS)
    assert model.training  # put back as it was


@pytest.mark.usefixtures("one_thread")
def test_linear_probe_standardises_by_the_training_texts_and_seeds_random_weights_as_finetuning(
        tmp_path, trained, monkeypatch):
    topics = load_csv_dataset(write_topic_csv(tmp_path / "topics.csv"))  # its test part: one of each training text
    data = TextClassificationData(topics.train, topics.test[:5], topics.label_names, "t")  # so that the two differ
    seen = []
    real_fit = baselines.fit_logistic_regression

    def recording_fit(features, labels, num_labels, C):
        seen.append(features)
        return real_fit(features, labels, num_labels, C)

    monkeypatch.setattr(baselines, "fit_logistic_regression", recording_fit)
    result = linear_probe(trained, data, C=10.0)
    assert (result.accuracy, result.num_train, result.num_test, result.num_features) == (1.0, 36, 5, 64)
    train = seen[-1]  # standardised by the training texts: mean 0, spread 1 in every feature
    assert torch.allclose(train.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(train.std(0, correction=0), torch.ones(64, dtype=torch.float64), atol=1e-6)
    held = TextClassificationData(topics.train[:30], topics.test, topics.label_names, "t", validation=topics.train[30:])
    assert linear_probe(trained, held, C=10.0).num_train == len(seen[-1]) == 36  # the validation share too

    models = []
    real_features = baselines.frozen_features
    monkeypatch.setattr(baselines, "frozen_features",
                        lambda model, *args: models.append(model) or real_features(model, *args))
    linear_probe(trained, data, from_scratch=True, seed=3)
    scratch, _ = load_for_task(trained, 2, from_scratch=True, seed=3)
    pretrained, _ = load_for_task(trained, 2)
    weights = "minibert.embeddings.word_embeddings.weight"
    assert torch.equal(models[-1].state_dict()[weights], scratch.state_dict()[weights])
    assert not torch.equal(models[-1].state_dict()[weights], pretrained.state_dict()[weights])


def test_linear_probe_cli_reports_pretrained_and_random_weights_per_seed(tmp_path, trained):
    path = write_topic_csv(tmp_path / "topics.csv", with_split=False)
    proc = run_script("linear_probe.py", "--model", trained, "--dataset", path, "--seeds", "0", "1", "--C", "10",
                      "--threads", "1", "--results-json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert "seed 0: pretrained accuracy" in proc.stdout and "seed 1: pretrained accuracy" in proc.stdout
    assert "from random weights: accuracy mean" in proc.stdout and "LOAD REPORT" not in proc.stdout + proc.stderr
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [r["seed"] for r in saved] == [0, 1]
    assert all(r["pretrained"]["num_features"] == r["from_scratch"]["num_features"] == 64 for r in saved)
    bad = run_script("linear_probe.py", "--model", trained, "--dataset", path, "--C", "-1")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: --C must be positive, got -1.0"]
    missing = run_script("linear_probe.py", "--model", tmp_path, "--dataset", path)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_tfidf_over_a_models_pieces_counts_what_its_tokenizer_makes_of_the_text(tmp_path, trained):
    from minibert_hf.baselines import tokenizer_pieces
    from minibert_hf.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(trained)
    text = "The cat sat, unexpectedly, on 2 mats."
    pieces = tokenizer.tokenize(text)
    assert "," in pieces and any(p.startswith("##") for p in pieces)  # punctuation and word pieces both occur
    analyzer = tokenizer_pieces(tokenizer)
    assert analyzer(text) == [p for p in pieces if p not in (",", ".")]
    features = TfidfFeatures([text], analyzer)
    assert set(features.vocabulary) == set(analyzer(text))
    assert features.transform([text])._nnz() == len(set(analyzer(text)))  # every piece counted in the rows too
    path = tmp_path / "pieces.csv"  # words the tiny tokenizer cuts into pieces, and one-character numbers
    path.write_text("text,label\n" + "".join(f"the cat sat unexpectedly on {i} mats,1\nrain fell on {i} roofs,0\n"
                                               for i in range(10)))
    proc = run_script("tfidf_baseline.py", "--dataset", path, "--seeds", "0", "--C", "10", "--tokenizer", trained,
                      "--results-json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "r.json").read_text())[0]
    from minibert_hf.finetuning_data import load_task_data

    data = load_task_data("sequence-classification", path, seed=0)  # the split the script made
    texts = [e.text for e in list(data.train) + list(data.validation or [])]
    expected = len(TfidfFeatures(texts, analyzer).vocabulary)
    assert expected != len(TfidfFeatures(texts).vocabulary)  # pieces and words tell apart here
    assert " pieces)" in proc.stdout and (saved["features"], saved["num_features"]) == ("pieces", expected)
    missing = run_script("tfidf_baseline.py", "--dataset", path, "--tokenizer", tmp_path / "none")
    assert missing.returncode == 2 and missing.stderr.strip().endswith("tokenizer folder does not exist")
