"""The model card: ``README.md`` of a saved model folder, rendered from the package template ``model_card.md``.

``write_model_card(folder, config=..., metrics=..., data_info=...)`` fills the Jinja template (through
``huggingface_hub.ModelCard``) with the model's shape, its held-out metrics, what it was trained on and how. The
default corpus is attributed from its one description, :data:`minibert_hf.corpus.DEFAULT_CORPUS_INFO`; a user's
own corpus is named as ``stats.json`` names it (file names only). Known Hub tokens are redacted.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from importlib import resources
from pathlib import Path
from typing import Mapping

from .atomic import copy_file, write_text
from .corpus import DEFAULT_CORPUS_INFO
from .errors import MiniBertInputError
from .privacy import is_secret_name, redact

CARD_NAME = "README.md"
LOSS_CURVE_NAME = "loss_curve.png"
# The usage snippet of a local card points here; push_to_hub swaps in the repo id in the uploaded copy.
LOCAL_MODEL_ID = "path/to/this/folder"

_METRIC_LABELS = (
    ("mlm_accuracy", "MLM accuracy"),
    ("nsp_accuracy", "NSP accuracy"),
    ("perplexity", "Perplexity (MLM)"),
    ("mlm_accuracy_at_mask", "MLM accuracy at [MASK] positions"),
    ("mlm_loss", "MLM loss"),
    ("nsp_loss", "NSP loss"),
    ("loss", "Total loss (MLM + NSP)"),
)
_CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "max_position_embeddings", "position_embedding_type", "rope_theta", "type_vocab_size", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "layer_norm_position", "layer_norm_eps", "use_pooler", "nsp_input", "classifier_pooling",
    "tie_word_embeddings",
)


def write_model_card(
    folder,
    *,
    config,
    metrics=None,
    data_info=None,
    training_args=None,
    loss_curve=None,
    repo_id: str | None = None,
    model_name: str | None = None,
    num_parameters: int | None = None,
) -> Path:
    """Render the model card for the model saved in ``folder`` and write it to ``folder/README.md``.

    - ``config``: the model's ``MiniBertConfig`` (or any config / dict with BERT field names).
    - ``metrics``: evaluation numbers (``mlm_accuracy``, ``nsp_accuracy``, ``perplexity``, ``mlm_loss``,
      ``nsp_loss``, ``loss``; accuracies as fractions), as a dict or as the path of a ``metrics.jsonl`` (the last
      record with evaluation numbers is used). ``eval_``/``test_`` prefixes are accepted.
    - ``data_info``: what the model was trained on, e.g. the ``stats.json`` of ``prepare_data.py`` (``source``,
      ``license`` and counts), as a dict or a path.
    - ``training_args``: a dict or ``argparse.Namespace`` of training options (anything that looks like a secret
      is left out).
    - ``loss_curve``: path of a PNG; copied into the folder as ``loss_curve.png`` and shown in the card.
    - ``repo_id``: the Hub id used in the usage snippet (default: the folder path).

    Returns the path of the written card. The write is atomic (temporary name, then rename).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = _config_dict(config)
    metrics = _normalise_metrics(_load_metrics(metrics))
    data_info = _load_json_like(data_info, "data_info")
    train_rows = _training_rows(training_args)

    name = model_name or (repo_id.split("/")[-1] if repo_id else default_model_name(folder))
    source, licence, attribution, slug = _describe_corpus(data_info)

    curve_rel = None
    if loss_curve is not None:
        loss_curve = Path(loss_curve)
        if loss_curve.is_file():
            target = folder / LOSS_CURVE_NAME
            if loss_curve.resolve() != target.resolve():
                copy_file(loss_curve, target)
            curve_rel = LOSS_CURVE_NAME
    elif (folder / LOSS_CURVE_NAME).is_file():
        curve_rel = LOSS_CURVE_NAME

    eval_results = []
    for key, label in _METRIC_LABELS[:3]:
        if key in metrics:
            eval_results.append(EvalResult(
                task_type="fill-mask" if key != "nsp_accuracy" else "text-classification",
                task_name="Masked language modelling" if key != "nsp_accuracy" else "Next-sentence prediction",
                dataset_type=slug, dataset_name=_short_source(source) or slug, dataset_split="test",
                metric_type="accuracy" if key.endswith("accuracy") else "perplexity",
                metric_name=label, metric_value=round(float(metrics[key]), 4),
            ))

    card_data = ModelCardData(
        language="en",
        license=(data_info.get("model_license") or "apache-2.0"),
        library_name="transformers",
        pipeline_tag="fill-mask",
        tags=["bert", "minibert", "fill-mask", "masked-language-modeling", "next-sentence-prediction",
              "pretraining", "custom_code"],
        datasets=[slug] if slug != "unknown" else None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )

    if num_parameters is None:
        num_parameters = _count_safetensors_parameters(folder)
    template = (resources.files("minibert_hf") / "model_card.md").read_text(encoding="utf-8")
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=name,
        model_id=repo_id or LOCAL_MODEL_ID,
        num_parameters=f"{num_parameters:,}" if num_parameters else "an unrecorded number of",
        config_rows=[(k, _fmt(cfg[k])) for k in _CONFIG_FIELDS if k in cfg],
        max_length=cfg.get("max_position_embeddings", "the model's maximum number of"),
        data_source=source,
        data_source_short=_short_source(source),
        data_license=licence,
        attribution=attribution,
        data_rows=_data_rows(data_info),
        training_rows=train_rows,
        metric_rows=[(label, _fmt_metric(key, metrics[key])) for key, label in _METRIC_LABELS if key in metrics],
        metrics_where=_metrics_where(metrics),
        loss_curve=curve_rel,
    )
    return write_text(folder / CARD_NAME, redact(str(card)))


def _config_dict(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(vars(config))


def _load_json_like(value, what: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise MiniBertInputError(f"cannot read {what} as JSON ({error.__class__.__name__})", file=path) from None
    if isinstance(value, Mapping):
        return dict(value)
    return dict(vars(value))


def _load_metrics(metrics) -> dict:
    """A dict of metrics from a dict, or from the last record with evaluation numbers in a metrics.jsonl."""
    from .metrics_log import read_metrics

    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        return dict(metrics)
    path = Path(metrics)
    if path.suffix != ".jsonl":
        return _load_json_like(path, "metrics")
    evals = [r for r in read_metrics(path) if any(k in _normalise_metrics(r) for k, _ in _METRIC_LABELS[:3])]
    return evals[-1] if evals else {}


def _normalise_metrics(metrics: Mapping) -> dict:
    """Numbers keyed by bare names; ``eval_loss`` wins over a plain (training) ``loss``."""
    prefixed, plain = {}, {}
    for key, value in metrics.items():
        key = str(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        for prefix in ("eval_", "eval/", "test_", "test/", "valid_", "validation_"):
            if key.startswith(prefix):
                prefixed[key[len(prefix):]] = value
                break
        else:
            plain[key] = value
    out = {**plain, **prefixed}
    mlm_loss = out.get("mlm_loss")
    if "perplexity" not in out and mlm_loss is not None and math.isfinite(mlm_loss) and mlm_loss < 50:
        out["perplexity"] = math.exp(mlm_loss)
    return out


def _metrics_where(metrics: Mapping) -> str:
    parts = []
    if "epoch" in metrics:
        parts.append(f"after epoch {_fmt(metrics['epoch'])}")
    if "step" in metrics:
        parts.append(f"step {_fmt(metrics['step'])}")
    return ", ".join(parts)


def _fmt_metric(key: str, value) -> str:
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if "accuracy" in key:  # mlm_accuracy, mlm_accuracy_at_mask, ...
        return f"{100 * value:.2f}%" if value <= 1.0 else f"{value:.2f}%"
    return f"{value:.4g}" if key != "perplexity" else f"{value:.2f}"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _describe_corpus(data_info: Mapping):
    """(source, licence, attribution, slug) for the card; the default corpus is recognised by its dataset id."""
    source = data_info.get("source")
    licence = data_info.get("license") or data_info.get("licence")
    attribution = data_info.get("attribution")
    slug = data_info.get("dataset")
    if source is not None and not isinstance(source, str):
        source = ", ".join(map(str, source)) if isinstance(source, (list, tuple)) else str(source)
    if slug == DEFAULT_CORPUS_INFO["dataset"]:
        source = source or DEFAULT_CORPUS_INFO["source"]
        licence = licence or DEFAULT_CORPUS_INFO["license"]
        attribution = attribution or DEFAULT_CORPUS_INFO["attribution"]
    if licence and data_info.get("license_url") and data_info["license_url"] not in licence:
        licence = f"{licence}, {data_info['license_url']}"
    if not slug:
        name = data_info.get("corpus") or ("custom text corpus" if source else "")
        slug = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "unknown"
    return source, licence, attribution, str(slug)


def _short_source(source) -> str:
    if not source:
        return ""
    if source == DEFAULT_CORPUS_INFO["source"]:
        return DEFAULT_CORPUS_INFO["short_name"]
    return source if len(source) <= 80 else source[:77] + "..."


_DATA_LABELS = {
    "corpus": "Corpus", "documents": "Documents", "num_documents": "Documents", "sentences": "Sentences",
    "tokens": "Tokens", "pairs_train": "Training pairs (sentence pairs)", "train_rows": "Training pairs (sentence pairs)",
    "pairs_test": "Held-out pairs", "test_rows": "Held-out pairs", "vocab_size": "Vocabulary size",
    "max_seq_length": "Maximum sequence length", "mlm_probability": "Masking probability", "masking": "Masking",
    "dupe_factor": "Duplication factor (passes over the training documents with fresh pairs/masks)",
}


def _data_rows(data_info: Mapping):
    rows = []
    for key, label in _DATA_LABELS.items():
        if key in data_info and isinstance(data_info[key], (int, float, str)) and label not in dict(rows):
            value = data_info[key]
            rows.append((label, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _fmt(value)))
    return rows


def _training_rows(training_args):
    if training_args is None:
        return []
    args = training_args if isinstance(training_args, Mapping) else vars(training_args)
    rows = []
    for key, value in args.items():
        if is_secret_name(str(key)) or value is None or callable(value):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        rows.append((str(key), _fmt(value)))
    return rows


def default_model_name(folder: Path) -> str:
    """A name for the card: the run folder's name (``outputs/run/final`` -> ``run``), ignoring temporary names."""
    resolved = folder.resolve()
    name = re.split(r"[.\-_]?(?:tmp|partial|incomplete)", resolved.name.lstrip("."), maxsplit=1)[0]
    if not name or name == "final" or re.match(r"(epoch|checkpoint|step)[-_]?\d*$", name):
        name = resolved.parent.name
    return name or "minibert"


def _count_safetensors_parameters(folder: Path) -> int | None:
    """Number of parameters stored in the folder's safetensors files (reads only their headers)."""
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for path in files:
            with open(path, "rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(size))
            for name, entry in header.items():
                if name != "__metadata__":
                    total += math.prod(entry["shape"])
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return total
