"""Share a trained MiniBERT on the Hugging Face Hub: ``push_to_hub(folder, repo_id)``.

Only the shareable files of a ``save_pretrained`` folder are uploaded (weights, config, code files, tokenizer, card,
loss curve), never optimizer or accelerate state; a folder whose text files hold the Hub token or an absolute path
of this machine is refused. The token is taken from the ``token`` argument or the usual places (``HF_TOKEN``,
``hf auth login``); it is never printed, logged or written anywhere.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from .errors import HubError, MiniBertInputError, is_remote_failure
from .model_card import CARD_NAME, LOCAL_MODEL_ID, LOSS_CURVE_NAME
from .model_folder import check_model_folder
from .privacy import local_paths, redact

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


def shareable_files(folder) -> list[str]:
    """Names of the files of ``folder`` that ``push_to_hub`` uploads (top level only, sorted).

    Raises MiniBertInputError when the folder is not a complete model folder (no config, no safetensors
    weights, no tokenizer).
    """
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
        _check_shareable_text(staging, names, token)
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
            if not is_remote_failure(error):
                raise
            raise HubError(redact(_describe_hub_failure(error, repo_id, endpoint), token)) from None
    return f"{endpoint.rstrip('/')}/{repo_id}"


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _check_shareable_text(staging: Path, names: Iterable[str], token: str) -> None:
    """Refuse to upload a text file that holds the token (e.g. a config that picked it up by mistake) or an
    absolute path of this machine (e.g. a card written from a user's corpus by an older version)."""
    needle = token.encode()
    for name in names:
        if name.endswith((".json", ".md", ".py", ".txt")):
            data = (staging / name).read_bytes()
            if needle in data:
                raise MiniBertInputError("contains the Hub token; refusing to upload it", file=name)
            paths = local_paths(data.decode("utf-8", errors="replace"))
            if paths:
                raise MiniBertInputError(f"names a path of this machine ({paths[0]}); refusing to upload it: "
                                         "remove it from the file first", file=name)


__all__ = ["SHAREABLE_PATTERNS", "push_to_hub", "shareable_files"]
