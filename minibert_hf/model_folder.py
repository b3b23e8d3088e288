"""The saved model folder: write one completely or not at all, check one, load one.

A model folder is what ``save_pretrained`` writes, made complete: ``config.json`` (with ``auto_map``), the two code
files, ``model.safetensors``, the tokenizer, and for a pretrained model its ``README.md`` card and loss curve.
Training, fine-tuning, inference and the Hub upload all go through here:

- :func:`save_model_folder` writes it under a temporary name and renames it when complete;
- :func:`check_model_folder` says in one line why a folder is not one (before anything heavy is loaded);
- :func:`load_model` loads ``(model, tokenizer)`` from a folder or a Hub repo, with one-line errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

from .atomic import atomic_folder, write_text
from .errors import HubError, MiniBertInputError, is_remote_failure

MODEL_TYPE = "minibert"


def save_model_folder(model, tokenizer, folder, *, card: dict | bool = True, extra_files: dict | None = None,
                      state_dict=None) -> Path:
    """Write ``model`` and ``tokenizer`` as a complete ``save_pretrained`` folder, atomically.

    ``card``: the facts for its model card, as keyword arguments of :func:`minibert_hf.model_card.write_model_card`
    (metrics, data_info, training_args, loss_curve, model_name, repo_id); ``True``: a card without them;
    ``False``: no card. ``extra_files``: more text files,
    ``{name: text}`` (e.g. a fine-tuning ``results.json``). ``state_dict``: the weights to save, when they are not
    the model's own (e.g. gathered from FSDP shards).
    """
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        with quiet_saving():  # transformers 5 writes safetensors only (no safe_serialization argument any more)
            model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            write_text(tmp / name, text)
        if card is not False:
            from .model_card import default_model_name, write_model_card

            card = dict(card) if isinstance(card, dict) else {}
            curve = card.pop("loss_curve", None)
            card.setdefault("model_name", default_model_name(folder))  # named for the folder, not its temporary
            write_model_card(tmp, config=model.config, loss_curve=curve if curve and Path(curve).is_file() else None,
                             **card)
    return folder


@contextlib.contextmanager
def quiet_saving():
    """No warnings below error level from transformers and accelerate ("Removed shared tensor ..." for the tied
    embeddings, which is expected) and no progress bars ("Writing model shards") while a folder is written: a
    run's stderr keeps its own lines, and a failure after a save is its last line. Restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    accelerate_logger = logging.getLogger("accelerate")
    accelerate_level = accelerate_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    accelerate_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        accelerate_logger.setLevel(accelerate_level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def check_model_folder(path) -> Path:
    """Raise a one-line MiniBertInputError unless ``path`` looks like a loadable MiniBERT folder."""
    path = Path(path)
    if not path.exists():
        raise MiniBertInputError("no such model folder", file=path)
    if not path.is_dir():
        raise MiniBertInputError("not a model folder (expected a directory written by save_pretrained)", file=path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise MiniBertInputError("no config.json: not a save_pretrained model folder", file=path)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise MiniBertInputError(f"not valid JSON ({error.__class__.__name__})", file=config_path) from None
    if not isinstance(config, dict):
        raise MiniBertInputError("not a JSON object", file=config_path)
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        raise MiniBertInputError(f"model_type is {model_type!r}, expected {MODEL_TYPE!r}: not a MiniBERT model",
                                 file=config_path)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise MiniBertInputError("no model.safetensors weights", file=path)
    from safetensors import safe_open

    for file in weights:  # reads only the header: a truncated or garbled file fails here, before any loading
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise MiniBertInputError(f"unreadable safetensors weights (corrupted?): {error.__class__.__name__}",
                                     file=file) from None
    return path


def load_model(name_or_path, auto_class=None, **kwargs):
    """Load ``(model, tokenizer)`` from a model folder or a Hub repo id, with clear one-line errors.

    ``auto_class`` defaults to ``AutoModelForPreTraining``; extra keyword arguments go to ``from_pretrained``.
    Weights are read from safetensors only (nothing is unpickled). A local folder that is not a complete
    MiniBERT model raises :class:`MiniBertInputError`; a Hub failure raises :class:`minibert_hf.errors.HubError`.
    """
    from transformers import AutoConfig, AutoModelForPreTraining, AutoTokenizer

    auto_class = auto_class or AutoModelForPreTraining
    name = os.fspath(name_or_path)
    local = Path(name)
    is_local = local.exists() or not _REPO_ID.match(name) or name.startswith((".", "/", "~"))
    if is_local:
        check_model_folder(local)
    try:
        # The config first: for a Hub id it is one request, so an unreachable Hub fails once, early.
        config = AutoConfig.from_pretrained(name, trust_remote_code=True)
        if getattr(config, "model_type", None) != MODEL_TYPE:
            raise MiniBertInputError(f"model_type is {config.model_type!r}, expected {MODEL_TYPE!r}: "
                                     "not a MiniBERT model", file=name)
        for key in [k for k in kwargs if hasattr(config, k)]:
            setattr(config, key, kwargs.pop(key))
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = auto_class.from_pretrained(name, config=config, trust_remote_code=True, use_safetensors=True,
                                           **kwargs)
    except MiniBertInputError:
        raise
    except Exception as error:  # noqa: BLE001 - a broken folder or download becomes one clear line
        message = _first_line(error)
        if is_local:
            raise MiniBertInputError(f"cannot load the model ({error.__class__.__name__}: {message})",
                                     file=local) from None
        if is_remote_failure(error) or isinstance(error, OSError):
            raise HubError(f"cannot load {name!r}: not a local folder, and the Hub did not provide it "
                           f"({error.__class__.__name__}: {message})") from None
        raise MiniBertInputError(f"cannot load the model {name!r} ({error.__class__.__name__}: {message})") from None
    return model, tokenizer


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no details"
