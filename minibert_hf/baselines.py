"""What a text classifier scores without fine-tuning: logistic regression on TF-IDF features, or on a frozen encoder's.

Both are measured on exactly the split fine-tuning uses (the same ``TextClassificationData``): they train on
everything fine-tuning may train on, the training part and its validation share, and are scored on the same
held-out texts. :func:`tfidf_logistic_regression` is the reference a fine-tuned MiniBERT should beat: features as
scikit-learn's ``TfidfVectorizer`` defaults make them (lower-cased words of two or more word characters, smoothed
idf, each row scaled to unit length). :func:`linear_probe` asks how much of the task an encoder's features already
hold: the vector a fine-tuned classifier would read (the pooled last layer), frozen, standardised as scikit-learn's
``StandardScaler`` does. The classifier is scikit-learn's ``LogisticRegression`` (L2 penalty, ``C`` = 1, an
unpenalised intercept), fitted to convergence with full-batch L-BFGS.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WORD = re.compile(r"(?u)\b\w\w+\b")


@dataclass
class BaselineResult:
    accuracy: float
    macro_f1: float
    num_train: int
    num_test: int
    num_features: int


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def tokenizer_pieces(tokenizer):
    """The features of a text as a model sees it: its tokenizer's pieces that hold a letter or digit."""
    return lambda text: [piece for piece in tokenizer.tokenize(text) if any(c.isalnum() for c in piece)]


class TfidfFeatures:
    """The vocabulary and idf of the training texts; ``transform`` gives their unit-length TF-IDF rows.
    ``analyzer``: a text -> its features (default: :func:`words`, scikit-learn's)."""

    def __init__(self, texts: list[str], analyzer=words):
        self.analyzer = analyzer
        document_frequency = Counter(word for text in texts for word in set(analyzer(text)))
        self.vocabulary = {word: index for index, word in enumerate(sorted(document_frequency))}
        n = len(texts)
        # smoothed idf: as if one more document held every word once, so no word gets an infinite weight
        self.idf = torch.tensor([math.log((1 + n) / (1 + document_frequency[word])) + 1
                                 for word in sorted(document_frequency)], dtype=torch.float64)

    def transform(self, texts: list[str]) -> torch.Tensor:
        """(texts, vocabulary) sparse rows; words outside the vocabulary are dropped."""
        rows, columns, counts = [], [], []
        for row, text in enumerate(texts):
            for word, count in Counter(w for w in self.analyzer(text) if w in self.vocabulary).items():
                rows.append(row)
                columns.append(self.vocabulary[word])
                counts.append(float(count))
        index = torch.tensor([rows, columns], dtype=torch.long).reshape(2, -1)
        values = torch.tensor(counts, dtype=torch.float64) * self.idf[index[1]]
        norms = torch.zeros(len(texts), dtype=torch.float64).index_add_(0, index[0], values * values).sqrt()
        values = values / norms.clamp_min(1e-12)[index[0]]
        shape = (len(texts), len(self.vocabulary))
        return torch.sparse_coo_tensor(index, values, shape, check_invariants=True).coalesce()


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_labels: int, C: float = 1.0):
    """Minimise C * (sum of the log losses) + ||W||² / 2, as scikit-learn does: one weight vector and a sigmoid for
    two labels, one per label and a softmax for more. Returns ``predict(features) -> labels``."""
    binary = num_labels == 2
    weights = torch.zeros(features.shape[1], 1 if binary else num_labels, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(weights.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=1000, tolerance_grad=1e-7, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def logits(rows):
        return rows @ weights + bias  # (texts, 1 or labels); rows sparse or dense

    def closure():
        optimizer.zero_grad()
        if binary:
            log_loss = F.binary_cross_entropy_with_logits(logits(features)[:, 0], labels.double(), reduction="sum")
        else:
            log_loss = F.cross_entropy(logits(features), labels, reduction="sum")
        loss = C * log_loss + 0.5 * (weights**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)

    def predict(rows) -> list[int]:
        with torch.no_grad():
            scores = logits(rows)
            return (scores[:, 0] > 0).long().tolist() if binary else scores.argmax(-1).tolist()

    return predict


def seeds_summary(accuracies: list[float]) -> str:
    """"accuracy mean M (min A, max B) over N seed(s)": the closing line of the baseline scripts."""
    mean = sum(accuracies) / len(accuracies)
    return (f"accuracy mean {mean:.4f} (min {min(accuracies):.4f}, max {max(accuracies):.4f}) "
            f"over {len(accuracies)} seed(s)")


def _fit_and_score(data, train_features, test_features, C: float) -> BaselineResult:
    """Fit on the training part and its validation share (``train_features``, in that order); score ``data.test``."""
    from .finetuning import accuracy_and_macro_f1

    train = list(data.train) + list(data.validation or [])
    predict = fit_logistic_regression(train_features, torch.tensor([example.label for example in train]),
                                      data.num_labels, C)
    accuracy, macro_f1 = accuracy_and_macro_f1(predict(test_features), [example.label for example in data.test],
                                               data.num_labels)
    return BaselineResult(accuracy, macro_f1, len(train), len(data.test), train_features.shape[1])


def tfidf_logistic_regression(data, C: float = 1.0, analyzer=words) -> BaselineResult:
    """Train on ``data.train`` (and ``data.validation``, if any) and score ``data.test``; ``analyzer``: as
    :class:`TfidfFeatures` (e.g. ``tokenizer_pieces(tokenizer)``)."""
    train = list(data.train) + list(data.validation or [])
    features = TfidfFeatures([example.text for example in train], analyzer)
    return _fit_and_score(data, features.transform([example.text for example in train]),
                          features.transform([example.text for example in data.test]), C)


@torch.no_grad()
def frozen_features(model, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 256):
    """(texts, hidden) float64: what the linear layer of a sequence classifier reads (the model's own pooling of its
    last layer), computed with the model as it is, in eval mode; the model is left unchanged."""
    classifier, training = model.classifier, model.training
    model.classifier = torch.nn.Identity()  # the "logits" are then the pooled vectors
    model.eval()
    try:
        parts = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_token_type_ids=True, return_tensors="pt").to(model.device)
            parts.append(model(**batch).logits.double().cpu())
        return torch.cat(parts) if parts else torch.zeros(0, model.config.hidden_size, dtype=torch.float64)
    finally:
        model.classifier = classifier
        model.train(training)


def linear_probe(model_name_or_path, data, *, from_scratch: bool = False, seed: int = 0, C: float = 1.0,
                 pooling: str | None = None, max_length: int = 128) -> BaselineResult:
    """Logistic regression on an encoder's frozen features (see :func:`frozen_features`), each standardised by its
    mean and spread over the training texts. ``from_scratch``: the same architecture with random weights, seeded
    as ``finetune(..., seed=seed)`` seeds it; ``pooling``: "cls" or "mean" instead of the model's own."""
    from .finetuning import load_for_task

    model, tokenizer = load_for_task(model_name_or_path, data.num_labels, "sequence-classification", from_scratch,
                                     seed, data.label_names, pooling=pooling)
    max_length = min(max_length, model.config.max_position_embeddings)
    train = list(data.train) + list(data.validation or [])
    train_features = frozen_features(model, tokenizer, [example.text for example in train], max_length)
    test_features = frozen_features(model, tokenizer, [example.text for example in data.test], max_length)
    mean, spread = train_features.mean(0), train_features.std(0, correction=0)
    spread = torch.where(spread > 0, spread, torch.ones_like(spread))  # a constant feature stays 0, not NaN
    return _fit_and_score(data, (train_features - mean) / spread, (test_features - mean) / spread, C)
