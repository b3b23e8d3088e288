"""A checkpoint saved by an earlier version of the package still loads and gives the same outputs.

``fixtures/legacy-tiny/`` is a tiny pretraining folder written by the code before the restructure (its own copies of
the two code files included), with the outputs that code computed in ``legacy-tiny-reference.json``. It must load
with today's package in-process, through remote code with the folder's own (old) code files, and through remote code
with today's code files dropped into it, in a process where ``minibert_hf`` cannot be imported.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isolation import BLOCK_MINIBERT_HF  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "fixtures" / "legacy-tiny"
REFERENCE = json.loads((ROOT / "tests" / "fixtures" / "legacy-tiny-reference.json").read_text())
INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def outputs_of(model) -> dict:
    """The reference's numbers for ``model`` on the reference's (padded) batch of two sentence pairs."""
    batch = {name: torch.tensor(REFERENCE[name]) for name in INPUTS}
    with torch.no_grad():
        out = model.eval()(**batch)
    return {"seq_relationship_logits": out.seq_relationship_logits.tolist(),
            "prediction_logits_sum_per_position": out.prediction_logits.sum(-1).tolist(),
            "prediction_logits_first_row_first_20": out.prediction_logits[0, 1, :20].tolist()}


def assert_matches_reference(outputs: dict) -> None:
    for key, values in outputs.items():
        torch.testing.assert_close(torch.tensor(values), torch.tensor(REFERENCE[key]), atol=1e-4, rtol=1e-4,
                                   msg=lambda text: f"{key}: {text}")


def test_the_reference_batch_has_padding():
    """The reference covers the unpadded path too (one row is padded)."""
    mask = torch.tensor(REFERENCE["attention_mask"])
    assert not bool(mask.all()) and bool(mask.any(dim=1).all())


def test_legacy_folder_loads_in_process_with_the_same_outputs():
    from minibert_hf import MiniBertForPreTraining
    from minibert_hf.model_folder import check_model_folder, load_model

    check_model_folder(LEGACY)
    assert_matches_reference(outputs_of(MiniBertForPreTraining.from_pretrained(LEGACY)))
    model, tokenizer = load_model(LEGACY)
    assert_matches_reference(outputs_of(model))
    real = [i for i, m in zip(REFERENCE["input_ids"][0], REFERENCE["attention_mask"][0]) if m]
    assert tokenizer("the cat sat on the mat .", "it was warm .")["input_ids"] == real  # the saved tokenizer


REMOTE = BLOCK_MINIBERT_HF + textwrap.dedent("""
    import json, sys

    import torch
    from transformers import AutoModelForPreTraining

    folder, batch = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        out = model(**{name: torch.tensor(value) for name, value in batch.items()})
    print(json.dumps({"module": type(model).__module__,
                      "seq_relationship_logits": out.seq_relationship_logits.tolist(),
                      "prediction_logits_sum_per_position": out.prediction_logits.sum(-1).tolist(),
                      "prediction_logits_first_row_first_20": out.prediction_logits[0, 1, :20].tolist()}))
""")


@pytest.mark.parametrize("code", ["its own code files", "today's code files"])
def test_legacy_folder_loads_through_remote_code(tmp_path, code):
    folder = tmp_path / "elsewhere" / "legacy"
    shutil.copytree(LEGACY, folder)
    if code == "today's code files":
        for name in ("configuration_minibert.py", "modeling_minibert.py"):
            shutil.copyfile(ROOT / "minibert_hf" / name, folder / name)
    (tmp_path / "load.py").write_text(REMOTE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    batch = json.dumps({name: REFERENCE[name] for name in INPUTS})
    proc = subprocess.run([sys.executable, "-I", str(tmp_path / "load.py"), str(folder), batch], cwd=folder.parent,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "minibert_hf" not in result.pop("module")  # the folder's code, not the package
    assert_matches_reference(result)
