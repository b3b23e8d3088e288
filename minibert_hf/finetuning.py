"""Fine-tune a pretrained MiniBERT with transformers' ``Trainer`` and measure it on held-out data.

Two tasks, each a data type of :mod:`~minibert_hf.finetuning_data` and an Auto class:

    sequence-classification  TextClassificationData   AutoModelForSequenceClassification   accuracy, macro-F1
    token-classification     TokenClassificationData  AutoModelForTokenClassification      entity P / R / F1

A tenth of the training examples (whole groups: movies, documents) is held back for validation, unless the data
has a validation split of its own (CoNLL-2003 does): ``Trainer``
evaluates on it after every epoch and keeps the best epoch's weights, and the held-out test set is scored once, at the
end. Words of a tagged sentence are split into WordPiece tokens; the word's tag goes on its first sub-token and the
others get -100 (no loss, no prediction), so every word is predicted once; words past ``max_length`` count as
predicted "O" (outside any entity) when scoring.

The model loads with ``AutoModelFor...from_pretrained(..., trust_remote_code=True)``; ``from_scratch=True`` builds
the same architecture with random weights, the baseline that shows what pretraining is worth.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .corpus import shown_name_or_id
from .errors import MiniBertInputError
from .finetuning_data import TextClassificationData, TokenClassificationData, check_test_fraction, split_examples
from .model_folder import save_model_folder

TASKS = ("sequence-classification", "token-classification")
# the peak learning rate per task when none is given: the best of the 3e-4 / 1e-3 / 3e-3 sweeps for make pretrain's
# model (Rotten Tomatoes and CoNLL-2003, 3 seeds each; README, "Does pretraining pay off downstream?")
DEFAULT_LEARNING_RATES = {"sequence-classification": 1e-3, "token-classification": 3e-3}


@dataclass
class FinetuneResult:
    """Held-out scores of one fine-tuning run. ``accuracy`` and ``macro_f1`` are per text (sequence
    classification) or per word (token classification); ``precision``/``recall``/``f1`` are entity-level (token
    classification only)."""

    task: str
    accuracy: float
    macro_f1: float
    majority_baseline: float  # accuracy of always predicting the most common label (tag)
    num_train: int
    num_validation: int
    num_test: int
    num_labels: int
    steps: int
    epochs: float
    best_epoch: float | None
    train_seconds: float
    model: str
    from_scratch: bool
    dataset: str
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- metrics


def accuracy_and_macro_f1(predictions, labels, num_labels: int) -> tuple[float, float]:
    """Accuracy, and the F1 averaged over classes (a class never predicted nor present is skipped)."""
    predictions, labels = list(predictions), list(labels)
    if not labels:
        return float("nan"), float("nan")
    accuracy = sum(p == t for p, t in zip(predictions, labels)) / len(labels)
    scores = []
    for c in range(num_labels):
        tp = sum(p == c and t == c for p, t in zip(predictions, labels))
        fp = sum(p == c and t != c for p, t in zip(predictions, labels))
        fn = sum(p != c and t == c for p, t in zip(predictions, labels))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return accuracy, sum(scores) / len(scores)


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """The entities of one sentence's tags as ``(type, first, last)`` word indexes, read as conlleval reads them:
    ``B-X`` (or ``S-X``) starts an entity, ``I-X`` (or ``E-X``) continues one of type X or else starts one, ``O``
    ends it, ``E-X``/``S-X`` end it after their word; a tag without a prefix (``PER``) acts as ``I-PER``."""
    spans, kind, first = set(), None, 0
    for index, tag in enumerate(list(tags) + ["O"]):
        prefix, _, name = tag.partition("-") if "-" in tag else ("I", "", tag)
        if tag == "O":
            prefix, name = "O", None
        starts = prefix in ("B", "S") or (prefix in ("I", "E") and name != kind)
        if kind is not None and (prefix == "O" or starts):
            spans.add((kind, first, index - 1))
            kind = None
        if starts:
            kind, first = name, index
        if kind is not None and prefix in ("E", "S"):
            spans.add((kind, first, index))
            kind = None
    return spans


def entity_scores(predicted: list[list[str]], gold: list[list[str]]) -> tuple[float, float, float]:
    """Micro precision, recall and F1 over entities: an entity counts when its type and both ends match."""
    found = correct = expected = 0
    for p, g in zip(predicted, gold):
        p_spans, g_spans = entity_spans(p), entity_spans(g)
        found, expected, correct = found + len(p_spans), expected + len(g_spans), correct + len(p_spans & g_spans)
    precision = correct / found if found else 0.0
    recall = correct / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# --------------------------------------------------------------------------------------------- model and data


def task_of(data) -> str:
    if isinstance(data, TokenClassificationData):
        return "token-classification"
    if isinstance(data, TextClassificationData):
        return "sequence-classification"
    raise TypeError(f"expected TextClassificationData or TokenClassificationData, got {type(data).__name__}")


def load_for_task(model_name_or_path, num_labels: int, task: str = "sequence-classification",
                  from_scratch: bool = False, seed: int = 0, label_names=None, dropout: float | None = None,
                  pooling: str | None = None):
    """``(model, tokenizer)``: the pretrained encoder with a new head for ``task``, or (``from_scratch``) the same
    architecture with every weight random. ``dropout`` (if given) replaces the hidden, attention and classifier
    dropout of the config: the "mini" preset pretrains without dropout, fine-tuning wants some. ``pooling`` (if
    given) sets what a sequence classifier reads: "cls" or "mean" (``classifier_pooling``)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from .model_folder import load_model

    auto = AutoModelForTokenClassification if task == "token-classification" else AutoModelForSequenceClassification
    label_names = list(label_names or range(num_labels))
    fields = dict(num_labels=num_labels, id2label={i: str(name) for i, name in enumerate(label_names)},
                  label2id={str(name): i for i, name in enumerate(label_names)})
    if dropout is not None:
        fields.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, classifier_dropout=dropout)
    if pooling is not None:
        fields.update(classifier_pooling=pooling)
    torch.manual_seed(seed)
    model, tokenizer = load_model(model_name_or_path, auto_class=auto, **fields)
    if from_scratch:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=True, **fields)
        torch.manual_seed(seed)
        model = auto.from_config(config, trust_remote_code=True)
    return model, tokenizer


def encode(task: str, examples: list, tokenizer, max_length: int):
    """A ``datasets.Dataset`` of model inputs and ``labels``: one label per text, or per token (tags aligned to
    the first sub-token of each word, -100 elsewhere)."""
    from datasets import Dataset

    if task == "sequence-classification":
        encoded = tokenizer([e.text for e in examples], truncation=True, max_length=max_length,
                            return_token_type_ids=True)
        return Dataset.from_dict({**encoded, "labels": [e.label for e in examples]})
    encoded = tokenizer([s.tokens for s in examples], is_split_into_words=True, truncation=True,
                        max_length=max_length, return_token_type_ids=True)
    labels = []
    for row, sentence in enumerate(examples):
        previous, row_labels = None, []
        for word in encoded.word_ids(row):
            row_labels.append(-100 if word is None or word == previous else sentence.tags[word])
            previous = word
        labels.append(row_labels)
    return Dataset.from_dict({**encoded, "labels": labels})


def all_tags(task: str, examples) -> list[list[int]] | None:
    """Every word's gold tag id, per tagged sentence (None for labelled texts)."""
    return [e.tags for e in examples] if task == "token-classification" else None


def scores(task: str, logits, labels, label_names, sentence_tags=None) -> dict:
    """The metrics of a prediction: logits (texts, labels) or (sentences, seq, labels) with labels -100 where
    there is nothing to predict. ``sentence_tags``: every sentence's gold tag ids, all its words; the words that
    truncation cut off (they have no label) then count as predicted "O", so every gold entity is scored."""
    predictions = logits.argmax(-1)
    if task == "sequence-classification":
        accuracy, macro_f1 = accuracy_and_macro_f1(predictions.tolist(), labels.tolist(), len(label_names))
        return dict(accuracy=accuracy, macro_f1=macro_f1)
    outside = label_names.index("O") if "O" in label_names else -1  # -1: no class, always wrong
    predicted, gold, word_predictions, word_labels = [], [], [], []  # tag names per sentence; ids per word
    for row, (row_predictions, row_labels) in enumerate(zip(predictions.tolist(), labels.tolist())):
        kept = [(p, t) for p, t in zip(row_predictions, row_labels) if t != -100]  # one per word
        if sentence_tags is not None:  # the words past the truncation: gold tags kept, "O" predicted
            kept += [(outside, t) for t in sentence_tags[row][len(kept):]]
        predicted.append([label_names[p] if p >= 0 else "O" for p, _ in kept])
        gold.append([label_names[t] for _, t in kept])
        word_predictions += [p for p, _ in kept]
        word_labels += [t for _, t in kept]
    accuracy, macro_f1 = accuracy_and_macro_f1(word_predictions, word_labels, len(label_names))
    precision, recall, f1 = entity_scores(predicted, gold)
    return dict(accuracy=accuracy, macro_f1=macro_f1, precision=precision, recall=recall, f1=f1)


# --------------------------------------------------------------------------------------------- training


def check_options(*, epochs=3.0, max_steps=None, batch_size=32, learning_rate=None, max_length=128,
                  dropout=None, test_fraction=0.2, validation_fraction=0.1, pooling=None,
                  task="sequence-classification") -> None:
    """Raise a one-line MiniBertInputError (naming the CLI flag) for a fine-tuning option that cannot work."""
    def need(ok, flag, rule, value):
        if not ok:
            raise MiniBertInputError(f"--{flag} must be {rule}, got {value}")

    need(task in TASKS, "task", " or ".join(TASKS), task)
    need(epochs > 0, "epochs", "more than 0", epochs)
    need(max_steps is None or max_steps >= 1, "max-steps", "at least 1", max_steps)
    need(batch_size >= 1, "batch-size", "at least 1", batch_size)
    need(learning_rate is None or learning_rate > 0, "learning-rate", "more than 0", learning_rate)
    need(max_length >= 3, "max-length", "at least 3", max_length)
    need(dropout is None or 0 <= dropout < 1, "dropout", "in [0, 1)", dropout)
    need(pooling in (None, "cls", "mean"), "pooling", "cls or mean", pooling)
    need(0 < validation_fraction < 1, "validation-fraction", "between 0 and 1", validation_fraction)
    check_test_fraction(test_fraction)


def finetune(
    model_name_or_path,
    data: TextClassificationData | TokenClassificationData,
    *,
    from_scratch: bool = False,
    epochs: float = 3.0,
    max_steps: int | None = None,
    batch_size: int = 32,
    learning_rate: float | None = None,
    weight_decay: float = 0.01,
    warmup_fraction: float = 0.1,
    max_length: int = 128,
    dropout: float | None = 0.1,
    pooling: str | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    device=None,
    output_dir=None,
    progress: bool = False,
    log=print,
) -> FinetuneResult:
    """Fine-tune on ``data.train`` (less its validation part) with ``Trainer``; return the held-out scores on
    ``data.test`` of the epoch that scored best on validation (accuracy, or entity F1 for tagging).

    AdamW with linear warm-up (``warmup_fraction`` of the steps) and linear decay, no weight decay on biases and
    LayerNorm, gradient clipping at 1.0, dropout 0.1 (``dropout=None`` keeps the model's own), as in BERT; peak
    ``learning_rate`` by default the task's in ``DEFAULT_LEARNING_RATES``;
    ``pooling``: see :func:`load_for_task`. ``max_steps`` (if given) stops training early. ``log`` gets a line per
    validation; ``progress`` shows Trainer's bar. With ``output_dir``, the fine-tuned model, tokenizer and
    ``results.json`` are written there (to a temporary name first, then renamed).
    """
    from transformers import (DataCollatorForTokenClassification, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from . import training

    task = task_of(data)
    learning_rate = DEFAULT_LEARNING_RATES[task] if learning_rate is None else learning_rate
    check_options(epochs=epochs, max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                  max_length=max_length, dropout=dropout, pooling=pooling, validation_fraction=validation_fraction,
                  task=task)
    if output_dir is not None:
        output_dir = Path(output_dir)
        _check_writable(output_dir)
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise MiniBertInputError(f"device {str(device)!r} is not usable here ({str(error).splitlines()[0]})") from None

    model, tokenizer = load_for_task(model_name_or_path, data.num_labels, task, from_scratch, seed,
                                     data.label_names, dropout, pooling)
    max_length = min(max_length, model.config.max_position_embeddings)
    if data.validation:
        train, validation = data.train, data.validation
    else:
        train, validation = split_examples(data.train, test_fraction=validation_fraction, seed=seed)
    if not validation:
        raise MiniBertInputError(f"too few training examples ({len(data.train)}) to hold some out for validation")
    datasets = {name: encode(task, examples, tokenizer, max_length)
                for name, examples in (("train", train), ("validation", validation), ("test", data.test))}
    best_metric = "f1" if task == "token-classification" else "accuracy"
    steps_per_epoch = math.ceil(len(train) / batch_size)

    class ReleaseFreedMemory(TrainerCallback):
        """The pretraining loop's release of the memory glibc keeps after freed tensors, for Trainer's loop
        (a Rotten Tomatoes run: 933 MB resident at its end without, 798 MB with, at the same speed and accuracy)."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % training.RELEASE_MEMORY_EVERY == 0:
                training.release_freed_memory()

    class LogValidation(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if log:
                shown = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in (metrics or {}).items()
                                  if k.removeprefix("eval_") in ("loss", "accuracy", "macro_f1", "f1"))
                log(f"epoch {state.epoch:.2f} (step {state.global_step}): validation {shown}")

    with tempfile.TemporaryDirectory(prefix="minibert-finetune-") as work:
        arguments = TrainingArguments(
            output_dir=work, eval_strategy="epoch", save_strategy="epoch", save_only_model=True, save_total_limit=1,
            load_best_model_at_end=True, metric_for_best_model=best_metric, greater_is_better=True,
            num_train_epochs=epochs, max_steps=max_steps or -1, per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=2 * batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
            warmup_steps=warmup_fraction, lr_scheduler_type="linear", max_grad_norm=1.0, seed=seed, data_seed=seed,
            logging_steps=50, report_to="none", disable_tqdm=not progress, use_cpu=device.type == "cpu",
        )
        collator = (DataCollatorForTokenClassification(tokenizer) if task == "token-classification"
                    else DataCollatorWithPadding(tokenizer))
        trainer = Trainer(model=model, args=arguments, train_dataset=datasets["train"],
                          eval_dataset=datasets["validation"], data_collator=collator, processing_class=tokenizer,
                          compute_metrics=lambda p: scores(task, torch.as_tensor(p.predictions),
                                                           torch.as_tensor(p.label_ids), data.label_names,
                                                           all_tags(task, validation)),
                          callbacks=[LogValidation(), ReleaseFreedMemory()])
        trainer.remove_callback(PrinterCallback)  # the loss dicts; our callback prints the validation lines
        if not progress:
            trainer.remove_callback(ProgressCallback)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        evaluations = [entry for entry in trainer.state.log_history if f"eval_{best_metric}" in entry]
        best = max(evaluations, key=lambda entry: entry[f"eval_{best_metric}"]) if evaluations else None
        trainer.compute_metrics = None  # its tags are the validation sentences'; the test set is scored below
        held_out = trainer.predict(datasets["test"])
    model = trainer.model
    words = all_tags(task, data.test)
    metrics = scores(task, torch.as_tensor(held_out.predictions), torch.as_tensor(held_out.label_ids),
                     data.label_names, words)
    # the majority class over what `metrics` scored: every text, or every word (those past max_length too)
    truth = ([tag for tags in words for tag in tags] if words is not None
             else torch.as_tensor(held_out.label_ids).flatten().tolist())
    majority = max(truth.count(c) for c in set(truth)) / len(truth)
    result = FinetuneResult(
        task=task, **metrics, majority_baseline=majority, num_train=len(train), num_validation=len(validation),
        num_test=len(data.test), num_labels=data.num_labels, steps=trainer.state.global_step,
        epochs=trainer.state.global_step / steps_per_epoch, best_epoch=best["epoch"] if best else None,
        train_seconds=round(seconds, 2), model=shown_name_or_id(model_name_or_path), from_scratch=from_scratch,
        dataset=data.source,
        settings=dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
                      warmup_fraction=warmup_fraction, max_length=max_length, seed=seed, max_steps=max_steps,
                      dropout=model.config.hidden_dropout_prob, pooling=model.config.classifier_pooling,
                      validation_fraction=validation_fraction),
    )
    if output_dir is not None:
        save_model_folder(model, tokenizer, output_dir, card=False,
                          extra_files={"results.json": json.dumps(result.to_dict(), indent=2) + "\n"})
    return result


def _check_writable(folder: Path) -> None:
    """Fail before training if the output folder cannot be written."""
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as error:
        raise MiniBertInputError(f"cannot write the output folder ({error.strerror or error})", file=folder) from None
    if folder.exists() and not folder.is_dir():
        raise MiniBertInputError("exists and is not a folder", file=folder)


__all__ = ["DEFAULT_LEARNING_RATES", "FinetuneResult", "TASKS", "accuracy_and_macro_f1", "check_options",
           "entity_scores", "entity_spans", "finetune", "load_for_task"]
