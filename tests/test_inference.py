"""predict_nsp / predict_mlm, scripts/predict.py and fill-mask through remote code, on a tiny MiniBERT trained
in-process for a few optimizer steps on sentences written for these tests.

``trained_model_folder()`` is shared with test_hub.py and test_finetune.py (built once per test process).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from isolation import BLOCK_MINIBERT_HF
from minibert_hf import MiniBertConfig, MiniBertForMaskedLM, MiniBertForPreTraining
from minibert_hf.errors import MiniBertInputError
from minibert_hf.inference import MLMResult, NSPResult, predict_mlm, predict_nsp
from minibert_hf.model_folder import load_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

# A tiny "story" the model memorises: sentence i is followed by sentence i + 1 (cyclically).
STORY = [
    "the cat sat on the mat .",
    "the dog slept by the door .",
    "a bird sang in the old tree .",
    "the sun rose over the quiet hills .",
    "rain fell on the red roof .",
    "the children played in the green park .",
]

_CACHE: dict[str, Path] = {}


def _story_batch(tokenizer, rng: random.Random, generator: torch.Generator, size: int = 24) -> dict:
    firsts, seconds, nsp = [], [], []
    for _ in range(size):
        i = rng.randrange(len(STORY))
        follows = (i + 1) % len(STORY)
        if rng.random() < 0.5:
            j, label = follows, 0
        else:
            j, label = rng.choice([k for k in range(len(STORY)) if k != follows]), 1
        firsts.append(STORY[i])
        seconds.append(STORY[j])
        nsp.append(label)
    enc = tokenizer(firsts, seconds, padding=True, return_tensors="pt")
    input_ids = enc["input_ids"].clone()
    chosen = (torch.rand(input_ids.shape, generator=generator) < 0.2) & (input_ids > 4)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    input_ids[chosen] = tokenizer.mask_token_id
    return dict(input_ids=input_ids, token_type_ids=enc["token_type_ids"], attention_mask=enc["attention_mask"],
                labels=labels, next_sentence_label=torch.tensor(nsp))


def story_tokenizer():
    """The fixed-vocabulary tokenizer over every word of the fixture corpus and STORY (the same ids every run)."""
    from fixture_tokenizer import fixed_tokenizer

    corpus = FIXTURES / "corpus.txt"
    texts = corpus.read_text(encoding="utf-8").splitlines() if corpus.is_file() else []
    return fixed_tokenizer(texts + STORY)


def build_trained_folder(folder: Path, steps: int = 400, lr: float = 5e-3) -> Path:
    """A tiny MiniBertForPreTraining trained on STORY sentence pairs (MLM + NSP), saved with its tokenizer."""
    tokenizer = story_tokenizer()
    config = MiniBertConfig.from_preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=64,
                                        hidden_size=64, intermediate_size=128,
                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and the machine is shared
    try:
        torch.manual_seed(0)
        model = MiniBertForPreTraining(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
        rng, generator = random.Random(0), torch.Generator().manual_seed(0)
        model.train()
        for _ in range(steps):
            loss = model(**_story_batch(tokenizer, rng, generator)).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def trained_model_folder() -> Path:
    """The trained tiny model folder, built once per process. Tests must copy it before changing it."""
    if "folder" not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="minibert-test-model-"))
        atexit.register(shutil.rmtree, root, True)
        _CACHE["folder"] = build_trained_folder(root / "model")
    return _CACHE["folder"]


def run_script(name: str, *args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit ``code``, exactly one non-empty line on stderr starting with 'error:', no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def folder() -> Path:
    return trained_model_folder()


@pytest.fixture(scope="module")
def loaded(folder):
    model, tokenizer = load_model(folder)
    return model, tokenizer


# ------------------------------------------------------------------------------------------------ MLM


def test_predict_mlm_fills_the_memorised_word(loaded):
    model, tokenizer = loaded
    result = predict_mlm("the cat sat on the [MASK] .", model, tokenizer)
    assert isinstance(result, MLMResult)
    assert result.sentence == "the cat sat on the mat ." == str(result)
    assert len(result.masks) == 1
    mask = result.masks[0]
    assert mask.token == "mat" and result.tokens == ["mat"]
    assert mask.position == 6  # [CLS] the cat sat on the [MASK]
    assert len(mask.candidates) == 5
    probabilities = [p for _, p in mask.candidates]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0.0 < sum(probabilities) <= 1.0 + 1e-6 and probabilities[0] > 0.3
    assert not {token for token, _ in mask.candidates} & set(tokenizer.all_special_tokens)


def test_predict_mlm_fills_every_mask_and_keeps_the_rest_of_the_text(loaded):
    model, tokenizer = loaded
    result = predict_mlm("The Children [MASK] in the green [MASK] .", model, tokenizer, top_k=3)
    assert [m.token for m in result.masks] == ["played", "park"]
    assert result.sentence == "The Children played in the green park ."
    assert "[MASK]" not in result.sentence
    assert all(len(m.candidates) == 3 for m in result.masks)
    ids = tokenizer("The Children [MASK] in the green [MASK] .")["input_ids"]
    assert [m.position for m in result.masks] == [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]


def test_predict_mlm_agrees_with_the_model_logits(loaded):
    model, tokenizer = loaded
    sentence = "a bird [MASK] in the [MASK] tree ."
    result = predict_mlm(sentence, model, tokenizer, top_k=4)
    enc = tokenizer(sentence, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).prediction_logits[0]
    probabilities = logits.softmax(-1)
    probabilities[:, tokenizer.all_special_ids] = -1
    for mask in result.masks:
        expected = probabilities[mask.position].topk(4)
        assert [t for t, _ in mask.candidates] == tokenizer.convert_ids_to_tokens(expected.indices.tolist())
        assert [p for _, p in mask.candidates] == pytest.approx(expected.values.tolist(), abs=1e-5)


def test_predict_mlm_top_k_past_the_vocabulary_gives_every_word_and_no_special_token(loaded):
    """A top_k larger than the vocabulary lists each ordinary token once, most likely first, and never a special
    token (not even the ones the model gives more probability than some words)."""
    model, tokenizer = loaded
    mask = predict_mlm("the cat sat on the [MASK] .", model, tokenizer, top_k=len(tokenizer) + 10).masks[0]
    tokens = [token for token, _ in mask.candidates]
    assert len(tokens) == len(set(tokens)) == len(tokenizer) - len(tokenizer.all_special_ids)
    assert not set(tokens) & set(tokenizer.all_special_tokens)
    probabilities = [p for _, p in mask.candidates]
    assert probabilities == sorted(probabilities, reverse=True) and min(probabilities) >= 0.0


def test_an_input_of_exactly_the_models_length_is_accepted(loaded):
    model, tokenizer = loaded
    sentence = "the " * 61 + "[MASK]"  # [CLS] + 61 words + [MASK] + [SEP]: 64 tokens, the model's maximum
    assert len(tokenizer(sentence)["input_ids"]) == model.config.max_position_embeddings == 64
    assert len(predict_mlm(sentence, model, tokenizer).masks) == 1
    with pytest.raises(MiniBertInputError, match="65 tokens long"):
        predict_mlm("the " + sentence, model, tokenizer)


def test_word_piece_candidates_are_glued_to_the_word_before():
    from minibert_hf.inference import _fill

    assert _fill("the cat[MASK] sat [MASK] .", "[MASK]", ["##s", "down"], None, None) == "the cats sat down ."
    assert _fill("big [MASK] here", "[MASK]", ["##ger"], None, None) == "bigger here"


def test_predictions_use_eval_mode_and_restore_train_mode(folder, loaded):
    model, tokenizer = load_model(folder)  # its own copy: this test switches modes
    model.config.hidden_dropout_prob = 0.5
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    model.train()
    first = predict_mlm("the dog slept by the [MASK] .", model, tokenizer)
    second = predict_mlm("the dog slept by the [MASK] .", model, tokenizer)
    assert first == second  # no dropout noise
    assert model.training
    nsp = predict_nsp(STORY[0], STORY[1], model, tokenizer)
    assert nsp == predict_nsp(STORY[0], STORY[1], model, tokenizer) and model.training


def test_inputs_are_placed_on_the_models_device(loaded):
    model, tokenizer = loaded
    seen = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append({k: v.device for k, v in kwargs.items() if torch.is_tensor(v)}),
        with_kwargs=True)
    try:
        predict_mlm("the sun [MASK] over the quiet hills .", model, tokenizer)
        predict_nsp(STORY[3], STORY[4], model, tokenizer)
    finally:
        hook.remove()
    device = next(model.parameters()).device
    assert len(seen) == 2
    for devices in seen:
        assert set(devices) >= {"input_ids", "token_type_ids", "attention_mask"}
        assert set(devices.values()) == {device}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predictions_on_cuda(folder):
    model, tokenizer = load_model(folder)
    model.to("cuda")
    assert predict_mlm("the cat sat on the [MASK] .", model, tokenizer).sentence == "the cat sat on the mat ."
    assert predict_nsp(STORY[0], STORY[1], model, tokenizer).is_next


def test_predict_mlm_works_with_masked_lm_and_remote_code_models(folder, loaded):
    model, tokenizer = loaded
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining

    expected = predict_mlm("the children [MASK] in the green [MASK] .", model, tokenizer)
    others = [
        MiniBertForMaskedLM.from_pretrained(folder),
        AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True),
        AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True),
    ]
    for other in others:
        got = predict_mlm("the children [MASK] in the green [MASK] .", other.eval(), tokenizer)
        assert got.sentence == expected.sentence == "the children played in the green park ."
        for a, b in zip(got.masks, expected.masks):
            assert [t for t, _ in a.candidates] == [t for t, _ in b.candidates]


def test_predict_mlm_errors(loaded):
    model, tokenizer = loaded
    with pytest.raises(MiniBertInputError, match=r"no \[MASK\]"):
        predict_mlm("the cat sat on the mat .", model, tokenizer)
    with pytest.raises(ValueError, match="at most 64 tokens"):
        predict_mlm("the cat " * 40 + "[MASK] .", model, tokenizer)
    with pytest.raises(MiniBertInputError, match="empty"):
        predict_mlm("   ", model, tokenizer)
    with pytest.raises(MiniBertInputError, match="top_k"):
        predict_mlm("the [MASK] .", model, tokenizer, top_k=0)


# ------------------------------------------------------------------------------------------------ NSP


def test_predict_nsp_answers_and_probability(loaded):
    model, tokenizer = loaded
    result = predict_nsp(STORY[0], STORY[1], model, tokenizer)
    assert isinstance(result, NSPResult)
    is_next, probability = result  # a plain (bool, float) tuple
    assert is_next is True and isinstance(probability, float) and probability > 0.5
    assert result.sentence() == "The second sentence follows the first."

    enc = tokenizer(STORY[0], STORY[1], return_tensors="pt")
    assert enc["token_type_ids"][0].tolist().count(1) > 0  # the pair got segment B
    with torch.no_grad():
        expected = model(**enc).seq_relationship_logits.softmax(-1)[0, 0].item()
    assert probability == pytest.approx(expected, abs=1e-6)

    wrong = predict_nsp(STORY[0], STORY[4], model, tokenizer)
    assert wrong.is_next is False and wrong.probability < 0.5
    assert wrong.sentence() == "The second sentence does not follow the first."


def test_predict_nsp_errors(folder, loaded):
    model, tokenizer = loaded
    with pytest.raises(MiniBertInputError, match="sentence B is empty"):
        predict_nsp("the cat sat .", "", model, tokenizer)
    with pytest.raises(ValueError, match="at most 64 tokens"):
        predict_nsp("the cat sat . " * 10, "the dog slept . " * 10, model, tokenizer)
    masked_lm = MiniBertForMaskedLM.from_pretrained(folder)
    with pytest.raises(MiniBertInputError, match="no next-sentence head"):
        predict_nsp(STORY[0], STORY[1], masked_lm, tokenizer)


# ------------------------------------------------------------------------------------------------ CLI


def test_predict_cli_mlm_prints_the_filled_sentence_and_candidates(folder):
    filled = run_script("predict.py", "mlm", "--model", folder, "the dog [MASK] by the [MASK] .", "--top-k", "2")
    assert filled.returncode == 0, filled.stderr
    lines = filled.stdout.splitlines()
    assert lines[0] == "the dog slept by the door ."
    assert lines[1].strip().startswith("[MASK] 1: slept (") and lines[2].strip().startswith("[MASK] 2: door (")
    assert lines[1].count("(") == 2  # --top-k 2


def load_script(name: str):
    """Import scripts/<name>.py as a module (to run its main() in-process, which is faster than a subprocess)."""
    import importlib.util

    from global_state import restoring

    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main = restoring(module.main)  # what the CLI sets for its process (log levels, threads) is put back
    return module


@pytest.mark.parametrize("pair, expected", [
    ((STORY[2], STORY[3]), "The second sentence follows the first."),
    ((STORY[0], STORY[4]), "The second sentence does not follow the first."),
])
def test_predict_cli_nsp_answers_in_the_seed_words(folder, capsys, pair, expected):
    from minibert_hf.cli import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(load_script("predict").main, ["nsp", "--model", str(folder), *pair])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == expected
    assert out[1].startswith("probability that the second sentence follows the first: ")


def _broken_folders(folder: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model path, fragment of the expected error)."""
    cases = {}
    no_config = tmp / "no-config"
    shutil.copytree(folder, no_config)
    (no_config / "config.json").unlink()
    cases["no config"] = (no_config, "no config.json")

    other = tmp / "other-type"
    shutil.copytree(folder, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "gpt2"
    (other / "config.json").write_text(json.dumps(config))
    cases["other model type"] = (other, "model_type is 'gpt2'")

    corrupt = tmp / "corrupt"
    shutil.copytree(folder, corrupt)
    (corrupt / "model.safetensors").write_bytes(os.urandom(2048))
    cases["corrupted weights"] = (corrupt, "unreadable safetensors weights")

    truncated = tmp / "truncated"
    shutil.copytree(folder, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated weights"] = (truncated, "unreadable safetensors weights")

    no_weights = tmp / "no-weights"
    shutil.copytree(folder, no_weights)
    (no_weights / "model.safetensors").unlink()
    cases["no weights"] = (no_weights, "no model.safetensors")

    bad_json = tmp / "bad-json"
    shutil.copytree(folder, bad_json)
    (bad_json / "config.json").write_text("{not json")
    cases["config not JSON"] = (bad_json, "not valid JSON")

    cases["missing folder"] = (tmp / "does-not-exist", "no such model folder")
    a_file = tmp / "a-file.txt"
    a_file.write_text("hello")
    cases["a file, not a folder"] = (a_file, "not a model folder")
    return cases


def test_a_relative_model_folder_is_checked_as_a_folder_here(folder, tmp_path, monkeypatch):
    """`run/final` reads as a Hub id too; it exists here, so it is checked as a local folder: a broken one is a
    one-line MiniBertInputError naming what is missing (not a Hub error), and a good one loads."""
    shutil.copytree(folder, tmp_path / "run" / "final")
    shutil.copytree(folder, tmp_path / "run" / "broken")
    (tmp_path / "run" / "broken" / "config.json").unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MiniBertInputError, match=r"^run/broken: no config.json"):
        load_model("run/broken")
    model, _ = load_model("run/final")
    assert model.config.model_type == "minibert"


def test_predict_cli_bad_model_in_a_real_process(folder, tmp_path):
    # One real process: the one-line error reaches the terminal without a traceback.
    path, fragment = _broken_folders(folder, tmp_path)["corrupted weights"]
    proc = run_script("predict.py", "mlm", "--model", path, "the [MASK] .")
    line = assert_one_line_error(proc, 2, fragment)
    assert str(path) in line


@pytest.mark.parametrize("case", ["no config", "other model type", "corrupted weights", "truncated weights",
                                  "no weights", "config not JSON", "missing folder",
                                  "a file, not a folder", "one text for nsp", "two texts for mlm", "too long",
                                  "top-k 0", "no mask"])
def test_predict_cli_bad_input_in_process(folder, tmp_path, capsys, case):
    from minibert_hf.cli import run_cli

    predict_script = load_script("predict")
    folders = _broken_folders(folder, tmp_path)
    if case in folders:
        path, fragment = folders[case]
        argv = ["mlm", "--model", str(path), "the [MASK] ."]
    else:
        argv, fragment = {
            "one text for nsp": (["nsp", "--model", str(folder), "only one ."], "nsp takes two sentences, got 1"),
            "two texts for mlm": (["mlm", "--model", str(folder), "a [MASK] .", "b ."], "mlm takes one sentence"),
            "too long": (["mlm", "--model", str(folder), "the cat " * 40 + "[MASK]"], "at most 64 tokens"),
            "top-k 0": (["mlm", "--model", str(folder), "the [MASK] .", "--top-k", "0"], "--top-k"),
            "no mask": (["mlm", "--model", str(folder), "no mask in this one ."], "no [MASK]"),
        }[case]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(predict_script.main, argv)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    if case in folders:
        assert str(folders[case][0]) in err[0]  # names the folder (or its config.json)


# ------------------------------------------------------------------------------------------------ fill-mask


FILL_MASK = BLOCK_MINIBERT_HF + textwrap.dedent("""
    import json, sys

    from transformers import pipeline
    from transformers.utils import logging
    logging.set_verbosity_error()

    fill = pipeline("fill-mask", model="model", trust_remote_code=True)
    one = fill("the cat sat on the [MASK] .", top_k=3)
    two = fill("the dog [MASK] by the [MASK] .", top_k=2)
    print(json.dumps({"one": one, "two": two, "class": type(fill.model).__name__,
                      "module": type(fill.model).__module__,
                      "leaked": sorted(m for m in sys.modules if m.startswith("minibert_hf"))}))
""")


def test_fill_mask_pipeline_through_remote_code_without_the_package(folder, tmp_path):
    shutil.copytree(folder, tmp_path / "model")
    (tmp_path / "fill.py").write_text(FILL_MASK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run([sys.executable, "-I", "fill.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["leaked"] == [] and "minibert_hf" not in out["module"]
    assert out["class"] == "MiniBertForMaskedLM"
    assert out["one"][0]["token_str"] == "mat"
    assert out["one"][0]["sequence"] == "the cat sat on the mat."
    assert len(out["one"]) == 3
    assert [len(candidates) for candidates in out["two"]] == [2, 2]
    assert out["two"][0][0]["token_str"] == "slept" and out["two"][1][0]["token_str"] == "door"
