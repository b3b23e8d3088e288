"""Issue 7 (reliability) through the real command-line scripts: bad input is one line on stderr naming the file,
exit code 2, no traceback and nothing half-written; the hub token never reaches what a run writes; nothing is
unpickled without ``weights_only=True``; the remote code of a saved model only defines things at import.

Cases already covered elsewhere (not repeated here): 30 bad CSVs through ``load_pretraining_csv``
(test_pretraining_data.py), 19 bad inputs of prepare_data.py (test_prepare_data_cli.py), SIGKILL during checkpoint
writes then ``--resume-from-checkpoint latest`` == a straight run and injected NaN never updating the weights
(test_training.py), bad model folders for predict.py / finetune.py in-process (test_inference.py, test_finetune.py),
the token on hub failures (test_hub.py).

Each CLI process costs several seconds of imports (torch, transformers), so the eight real processes are started
together in the background when the module starts (`procs`), the in-process cases (the scripts' ``main`` through
``run_cli``, as the ``__main__`` block does) run meanwhile, and the process tests come last.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from global_state import torch_threads
from ports import refusing_port
from test_inference import load_script
from test_training import newest_checkpoint_step

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FAKE_TOKEN = "hf_FAKEfaketoken123"
RUN_STEPS = 4  # the end-to-end run: 4 steps of 16 rows = one epoch of train64.csv
KILLED_STEPS = 8  # the run killed after its first checkpoint (step 2)


# ------------------------------------------------------------------------------------------------ helpers


def base_env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf-home"),
               MINIBERT_CACHE=str(tmp / "minibert-cache"), TOKENIZERS_PARALLELISM="false",
               HF_TOKEN_PATH=str(tmp / "no-token-file"))
    env.update(extra)
    return env


def token_env(tmp: Path, port: int) -> dict:
    """HF_TOKEN set, and a Hub endpoint on a refusing local port: the upload at the end fails (no network used)."""
    env = base_env(tmp, HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    env.pop("HF_HUB_OFFLINE")
    return env


def one_error_line(code: int, stderr: str, expected_code: int, fragments) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == expected_code, (code, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """What a failed run left in its output folder (an empty folder is harmless; anything in it is not)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def run_in_process(script: str, argv, capsys) -> tuple[int, str, str]:
    from minibert_hf.cli import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(load_script(script).main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def write_csv_rows(path: Path, header, rows) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread_here():
    """The in-process runs of this module use one torch thread (the real processes run meanwhile)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Fixture prose -> train.csv/test.csv/tokenizer (vocab 300, rows of 32), train64.csv, and bad variants."""
    from minibert_hf.pretraining_csv import load_pretraining_csv, write_pretraining_csv
    from minibert_hf.pretraining_data import prepare_pretraining_data
    from fixture_tokenizer import fixed_tokenizer, fixture_texts

    folder = tmp_path_factory.mktemp("reliability-data")
    prepare_pretraining_data(folder, text_files=sorted(map(str, FIXTURES.glob("*.txt"))), max_seq_length=32,
                             tokenizer=fixed_tokenizer(fixture_texts(FIXTURES), vocab_size=300, model_max_length=32),
                             test_size=0.2, seed=1, show_progress=False)
    rows = list(load_pretraining_csv(folder / "train.csv"))
    assert len(rows) >= 64, len(rows)
    write_pretraining_csv(folder / "train64.csv", rows[:64])

    bad = folder / "bad"
    bad.mkdir()
    header, cells = read_csv_rows(folder / "train64.csv")
    broken = [list(r) for r in cells[:8]]
    broken[2][header.index("BERT Input")] = "[1, 17, 2, 40"
    write_csv_rows(bad / "broken_json.csv", header, broken)
    keep = [i for i, name in enumerate(header) if name != "Is Next"]
    write_csv_rows(bad / "no_is_next.csv", [header[i] for i in keep], [[r[i] for i in keep] for r in cells[:8]])
    big = [list(r) for r in cells[:8]]
    ids = json.loads(big[4][header.index("BERT Input")])
    ids[1] = 5000
    big[4][header.index("BERT Input")] = json.dumps(ids)
    write_csv_rows(bad / "id_5000.csv", header, big)
    ragged = [list(r) for r in cells[:8]]
    ragged[5].append("an extra field")
    write_csv_rows(bad / "extra_field.csv", header, ragged)

    # rows of 140 tokens: longer than the 128 positions of a "tiny" model
    long_rows = []
    for n in range(8):
        a, b = [5 + (n + i) % 250 for i in range(68)], [5 + (n * 7 + i) % 250 for i in range(69)]
        input_ids = [1, *a, 2, *b, 2]
        labels = [-100] * len(input_ids)
        labels[3] = input_ids[3]
        long_rows.append(dict(input_ids=input_ids, labels=labels, next_sentence_label=n % 2,
                              token_type_ids=[0] * (len(a) + 2) + [1] * (len(b) + 1)))
    write_pretraining_csv(bad / "long_rows.csv", long_rows)

    # a tokenizer far smaller than the one the CSV ids come from
    small = fixed_tokenizer(fixture_texts(FIXTURES), vocab_size=150)
    assert len(small) < 250, len(small)
    small.save_pretrained(bad / "small_tokenizer")
    (bad / "broken_tokenizer").mkdir()
    (bad / "broken_tokenizer" / "tokenizer.json").write_text("{not json")
    return folder


def pretrain_args(data: Path, out: Path, *extra, train: str | Path | None = None) -> list:
    return ["--train-file", train or data / "train64.csv", "--test-file", data / "test.csv",
            "--tokenizer", data / "tokenizer", "--preset", "tiny", "--batch-size", "16", "--no-progress",
            "--output-dir", out, *extra]


def unwritable_output(tmp: Path) -> Path:
    """An output folder that cannot be created: under a regular file (root ignores chmod), else a read-only dir."""
    if os.geteuid() == 0:
        blocker = tmp / "a-regular-file"
        blocker.write_text("not a folder\n")
        return blocker / "run"
    locked = tmp / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "run"


@pytest.fixture(scope="module")
def model_folders(data, tmp_path_factory) -> dict:
    """A good tiny MiniBERT folder (untrained, 128 positions) and broken copies: name -> (path, error fragment)."""
    from transformers import BertConfig

    from minibert_hf import MiniBertConfig, MiniBertForPreTraining
    from minibert_hf.tokenizer import load_tokenizer
    from minibert_hf.model_folder import save_model_folder

    tmp = tmp_path_factory.mktemp("model-folders")
    tokenizer = load_tokenizer(data / "tokenizer")
    good = save_model_folder(MiniBertForPreTraining(MiniBertConfig.from_preset("tiny", vocab_size=len(tokenizer))),
                             tokenizer, tmp / "good")
    cases = {"good": (good, None)}

    no_config = tmp / "no-config"
    shutil.copytree(good, no_config)
    (no_config / "config.json").unlink()
    cases["no config"] = (no_config, "no config.json")

    bert = tmp / "bert-config"  # a real BERT config next to our weights, tokenizer and card
    shutil.copytree(good, bert)
    (bert / "config.json").unlink()
    BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64).save_pretrained(bert)
    assert json.loads((bert / "config.json").read_text())["model_type"] == "bert"
    cases["config of another model type"] = (bert, "model_type is 'bert'")

    corrupt = tmp / "corrupt"
    shutil.copytree(good, corrupt)
    size = (corrupt / "model.safetensors").stat().st_size
    (corrupt / "model.safetensors").write_bytes(bytes((i * 37 + 11) % 256 for i in range(size)))
    cases["corrupted model.safetensors"] = (corrupt, "unreadable safetensors weights")

    cases["missing folder"] = (tmp / "does-not-exist", "no such model folder")
    return cases


class Processes:
    """CLI processes started together in the background (stdout/stderr to files); `result(name)` waits for one."""

    def __init__(self, jobs: dict, folder: Path):
        self.procs, self.files, self.done = {}, {}, {}
        for number, (name, (script, argv, env)) in enumerate(jobs.items()):
            out, err = folder / f"{number}.out", folder / f"{number}.err"
            self.files[name] = (out, err)
            with open(out, "wb") as o, open(err, "wb") as e:
                self.procs[name] = subprocess.Popen([sys.executable, str(ROOT / "scripts" / script),
                                                     *map(str, argv)], env=env, stdout=o, stderr=e)

    def result(self, name) -> subprocess.CompletedProcess:
        if name not in self.done:
            code = self.procs[name].wait(timeout=900)
            out, err = (path.read_text(encoding="utf-8", errors="replace") for path in self.files[name])
            self.done[name] = subprocess.CompletedProcess(self.procs[name].args, code, out, err)
        return self.done[name]

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module", autouse=True)
def start_processes_early(request):
    """Start the real processes with the module's first test when any selected test needs them (so `-k` on an
    in-process case does not pay for them)."""
    import inspect

    selected = [item for item in request.session.items if getattr(item, "module", None) is request.module]
    if any("procs" in inspect.signature(item.function).parameters for item in selected):
        request.getfixturevalue("procs")


@pytest.fixture(scope="module")
def procs(data, model_folders, tmp_path_factory):
    """Every real-process case, started at once when the module starts; the in-process tests run meanwhile."""
    tmp = tmp_path_factory.mktemp("processes")
    held = contextlib.ExitStack()
    hub_port = held.enter_context(refusing_port())  # the token run's Hub: refused until every process is done
    env = base_env(tmp)
    topics = write_csv_rows(tmp / "topics.csv", ["text", "label"],
                            [[f"the river and the bridge number {i}", i % 2] for i in range(40)])
    outputs = {"token run": tmp / "token-run", "broken JSON": tmp / "o-json", "extra field": tmp / "o-extra",
               "init-from, rows longer than its positions": tmp / "o-long", "finetune": tmp / "o-finetune"}
    jobs = {
        "token run": ("pretrain.py", pretrain_args(data, outputs["token run"], "--max-steps", RUN_STEPS,
                                                   "--logging-steps", "1", "--checkpointing-steps", "2",
                                                   "--report-to", "tensorboard", "--push-to-hub",
                                                   "--hub-model-id", "someone/minibert-test"),
                      token_env(tmp, hub_port)),
        "broken JSON": ("pretrain.py", pretrain_args(data, outputs["broken JSON"],
                                                     train=data / "bad" / "broken_json.csv"), env),
        "extra field": ("pretrain.py", pretrain_args(data, outputs["extra field"],
                                                     train=data / "bad" / "extra_field.csv"), env),
        "unwritable output dir": ("pretrain.py", pretrain_args(data, unwritable_output(tmp)), env),
        "init-from, rows longer than its positions": (
            "pretrain.py", [*pretrain_args(data, outputs["init-from, rows longer than its positions"],
                                           train=data / "bad" / "long_rows.csv"),
                            "--init-from", model_folders["good"][0]], env),
        "predict": ("predict.py", ["mlm", "--model", model_folders["config of another model type"][0],
                                   "the [MASK] ."], env),
        "finetune": ("finetune.py", ["--model", model_folders["corrupted model.safetensors"][0], "--dataset", topics,
                                     "--max-steps", "1", "--output-dir", outputs["finetune"]], env),
        "push_to_hub": ("push_to_hub.py", [model_folders["no config"][0], "--repo-id", "someone/minibert"],
                        base_env(tmp, HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT="http://127.0.0.1:9")),
        # the token run's options without the token and tensorboard, twice the steps; SIGKILLed once its first
        # checkpoint is complete, with six steps still to go
        "killed": ("pretrain.py", pretrain_args(data, tmp / "killed", "--max-steps", KILLED_STEPS, "--logging-steps",
                                                "1", "--checkpointing-steps", "2"), env),
    }
    outputs["killed"] = tmp / "killed"
    running = Processes(jobs, tmp)
    running.outputs = outputs
    running.killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True,
                                      args=(running.procs["killed"], tmp / "killed"))
    running.killer.start()
    yield running
    running.stop()
    held.close()


def kill_after_first_checkpoint(proc: subprocess.Popen, run: Path) -> None:
    """SIGKILL `proc` as soon as its first checkpoint is complete (watched from this thread, outside the run)."""
    from minibert_hf.checkpoints import list_checkpoints

    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and not list_checkpoints(run):
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# ------------------------------------------------------------------------------------- in-process: pretrain.py
# (these run while the real processes started by `procs` are busy)


PRETRAIN_IN_PROCESS_CASES = {
    # name: (options appended to the good ones -- argparse: the later value wins, fragments of the line)
    "missing column": (lambda d, t: ["--train-file", d / "bad" / "no_is_next.csv"],
                       ["no_is_next.csv", "missing column", "'Is Next'"]),
    "train file is a directory": (lambda d, t: ["--train-file", d / "bad"], ["bad", "is a directory"]),
    "train file does not exist": (lambda d, t: ["--train-file", t / "nope.csv"], ["nope.csv", "does not exist"]),
    "test file does not exist": (lambda d, t: ["--test-file", t / "gone.csv"], ["gone.csv", "does not exist"]),
    "token id beyond the vocabulary": (lambda d, t: ["--train-file", d / "bad" / "id_5000.csv"],
                                       ["id_5000.csv", "row 5", "'BERT Input'", "5000"]),
    "tokenizer smaller than the CSV ids": (lambda d, t: ["--tokenizer", d / "bad" / "small_tokenizer"],
                                           ["train64.csv", "row ", "'BERT Input'", "outside the vocabulary"]),
    "tokenizer folder missing": (lambda d, t: ["--tokenizer", t / "no-tokenizer"], ["no-tokenizer"]),
    "unknown preset": (lambda d, t: ["--preset", "gigantic"], ["unknown preset 'gigantic'", "tiny"]),
    "negative --max-steps": (lambda d, t: ["--max-steps", "-5"], ["--max-steps must be at least 1", "-5"]),
    "--batch-size 0": (lambda d, t: ["--batch-size", "0"], ["--batch-size must be at least 1"]),
    "--max-steps not a number": (lambda d, t: ["--max-steps", "many"], ["--max-steps", "many"]),
    "init-from a folder without config": (lambda d, t: ["--init-from", d / "bad"], ["bad", "no config.json"]),
    "tokenizer.json not JSON": (lambda d, t: ["--tokenizer", d / "bad" / "broken_tokenizer"],
                                ["broken_tokenizer", "cannot load tokenizer"]),
    "resume from a folder that is not a checkpoint": (lambda d, t: ["--resume-from-checkpoint", d / "bad"],
                                                      ["bad", "not a complete checkpoint"]),
}


@pytest.mark.parametrize("case", sorted(PRETRAIN_IN_PROCESS_CASES))
def test_pretrain_cli_bad_input_in_process(data, tmp_path, capsys, fresh_accelerate_state, case):
    make, fragments = PRETRAIN_IN_PROCESS_CASES[case]
    out = tmp_path / "run"
    code, _, err = run_in_process("pretrain", pretrain_args(data, out, *make(data, tmp_path)), capsys)
    one_error_line(code, err, 2, fragments)
    assert leftovers(out) == []  # no final/, checkpoints/, metrics.jsonl or temporary folder


def test_pretrain_init_from_a_smaller_vocabulary_is_one_line(data, tmp_path, capsys, fresh_accelerate_state):
    """--init-from a model whose vocabulary is smaller than the CSV ids / the tokenizer."""
    from minibert_hf import MiniBertConfig, MiniBertForPreTraining
    from minibert_hf.tokenizer import load_tokenizer
    from minibert_hf.model_folder import save_model_folder

    small = load_tokenizer(data / "bad" / "small_tokenizer")
    folder = save_model_folder(MiniBertForPreTraining(MiniBertConfig.from_preset("tiny", vocab_size=len(small))),
                               small, tmp_path / "small-model")
    out = tmp_path / "run"
    code, _, err = run_in_process("pretrain", pretrain_args(data, out, "--init-from", folder), capsys)
    line = one_error_line(code, err, 2, [f"size {len(small)}"])
    assert "train64.csv" in line or "small-model" in line, line
    assert leftovers(out) == []


# ------------------------------------------------------------------- in-process: predict / finetune / push_to_hub


FOLDER_CASES = ["no config", "config of another model type", "corrupted model.safetensors", "missing folder"]


@pytest.mark.parametrize("cli", ["predict", "finetune", "push_to_hub"])
@pytest.mark.parametrize("case", FOLDER_CASES)
def test_model_folder_errors_in_process(model_folders, tmp_path, capsys, monkeypatch, cli, case):
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # never reaches the network
    path, fragment = model_folders[case]
    out = tmp_path / "out"
    topics = write_csv_rows(tmp_path / "topics.csv", ["text", "label"],
                            [[f"the boat and the harbour {i}", i % 2] for i in range(20)])
    argv = {
        "predict": ["nsp", "--model", path, "The river is wide.", "Boats cross it."],
        "finetune": ["--model", path, "--dataset", topics, "--max-steps", "1", "--output-dir", out],
        "push_to_hub": [path, "--repo-id", "someone/minibert"],
    }[cli]
    code, _, err = run_in_process(cli, argv, capsys)
    one_error_line(code, err, 2, [path, fragment])
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ unpickling


def _torch_load_calls(path: Path):
    text = path.read_text(encoding="utf-8")
    assert "from torch import load" not in text, path  # keep every call spelled torch.load(...)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
            yield node


SOURCES = sorted([*(ROOT / "minibert_hf").glob("*.py"), *(ROOT / "scripts").glob("*.py")])
@pytest.mark.parametrize("path", SOURCES, ids=[p.relative_to(ROOT).as_posix() for p in SOURCES])
def test_every_torch_load_says_weights_only_true(path):
    text = path.read_text(encoding="utf-8")
    assert "pickle.load" not in text and "import pickle" not in text, path
    for call in _torch_load_calls(path):
        flags = {k.arg: k.value for k in call.keywords}
        assert "weights_only" in flags and isinstance(flags["weights_only"], ast.Constant) \
            and flags["weights_only"].value is True, f"{path.name}:{call.lineno}: {ast.unparse(call)}"


# ------------------------------------------------------------------------------------------------ real processes


PRETRAIN_PROCESS_CASES = {
    # name: fragments of the one stderr line
    "broken JSON": ["broken_json.csv", "row 3", "'BERT Input'", "not a JSON list"],
    # pandas' parse error, as our one line: data rows counted as everywhere else, not datasets' logged copy
    "extra field": ["extra_field.csv", "row 6", "has 6 fields, the header has 5"],
    "unwritable output dir": ["cannot write to the output directory", "run"],
}


@pytest.mark.parametrize("case", sorted(PRETRAIN_PROCESS_CASES))
def test_pretrain_cli_bad_input_in_a_real_process(procs, case):
    proc = procs.result(case)
    one_error_line(proc.returncode, proc.stderr, 2, PRETRAIN_PROCESS_CASES[case])
    if case in procs.outputs:
        assert leftovers(procs.outputs[case]) == []


def test_pretrain_cli_init_from_a_model_with_fewer_positions_than_the_rows(procs):
    proc = procs.result("init-from, rows longer than its positions")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("error: ") and all(f in lines[-1] for f in ("long_rows.csv", "row 1", "140", "128 positions"))
    assert leftovers(procs.outputs["init-from, rows longer than its positions"]) == []


def test_pretrain_cli_init_from_error_is_the_only_stderr_line(procs):
    """The rows are checked against the --init-from config before any weights load: no "Loading weights" bar."""
    proc = procs.result("init-from, rows longer than its positions")
    one_error_line(proc.returncode, proc.stderr, 2, ["long_rows.csv"])


def test_init_from_names_the_test_file_when_its_rows_are_too_long(data, model_folders, tmp_path, capsys,
                                                                  fresh_accelerate_state):
    """Good training rows, too-long held-out rows: the error names the test file and its row, not the train file."""
    out = tmp_path / "out"
    argv = ["--train-file", data / "train64.csv", "--test-file", data / "bad" / "long_rows.csv",
            "--tokenizer", data / "tokenizer", "--batch-size", "16", "--no-progress", "--output-dir", out,
            "--init-from", model_folders["good"][0]]
    code, _, err = run_in_process("pretrain", argv, capsys)
    one_error_line(code, err, 2, ["long_rows.csv", "row 1", "140 tokens", "128 positions"])
    assert "train64.csv" not in err
    assert leftovers(out) == []


def test_predict_cli_real_bert_config_in_a_real_process(procs, model_folders):
    proc = procs.result("predict")
    path, fragment = model_folders["config of another model type"]
    one_error_line(proc.returncode, proc.stderr, 2, [path, fragment])
    assert proc.stdout.strip() == ""


def test_finetune_cli_corrupted_weights_in_a_real_process(procs, model_folders):
    proc = procs.result("finetune")
    path, fragment = model_folders["corrupted model.safetensors"]
    one_error_line(proc.returncode, proc.stderr, 2, [path, fragment])
    assert not procs.outputs["finetune"].exists()


def test_push_cli_folder_without_config_in_a_real_process(procs, model_folders):
    proc = procs.result("push_to_hub")
    path, fragment = model_folders["no config"]
    one_error_line(proc.returncode, proc.stderr, 2, [path, fragment])
    assert FAKE_TOKEN not in proc.stderr + proc.stdout


def token_run(procs) -> Path:
    """The run folder of the token run (trained, final/ saved, then the upload to an unreachable Hub failed)."""
    proc = procs.result("token run")
    assert proc.returncode == 1 and (procs.outputs["token run"] / "final" / "model.safetensors").is_file(), \
        proc.stderr[-3000:]
    return procs.outputs["token run"]


def test_token_run_never_writes_or_prints_the_token(procs):
    """A real pretraining run with HF_TOKEN in its environment and --push-to-hub to an unreachable Hub: the upload
    failure is one line, exit 1, and the token is in no file the run wrote, nor in its stdout/stderr."""
    proc = procs.result("token run")
    run = token_run(procs)  # exit 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]  # the run's own log lines come first
    assert "Traceback" not in proc.stderr and lines[-1].startswith("error: cannot reach the Hugging Face Hub"), \
        proc.stderr[-3000:]
    # saving final/ and the checkpoints adds nothing to stderr: no "Removed shared tensor" warning, no shard bars
    assert not [line for line in lines if "Removed shared tensor" in line or "Writing model shards" in line], \
        proc.stderr[-3000:]
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.relative_to(run).as_posix() for p in files}
    # the run wrote what it should (so the grep below looked at real output)
    assert {"final/model.safetensors", "final/config.json", "final/README.md", "final/tokenizer.json",
            "metrics.jsonl", "loss_curve.png", f"checkpoints/step-{RUN_STEPS}/optimizer.bin"} <= names, names
    assert any("events.out.tfevents" in n for n in names), names  # --report-to tensorboard
    assert not any(part.startswith((".tmp", ".old")) for n in names for part in n.split("/")), names
    token = FAKE_TOKEN.encode()
    for path in files:
        blob = path.read_bytes()
        assert token not in blob and token.lower() not in blob.lower(), path
    assert FAKE_TOKEN.lower() not in (proc.stdout + proc.stderr).lower()
    assert f"step {RUN_STEPS}: " in proc.stdout  # the final evaluation ran


def test_saved_remote_code_only_defines_things_at_import(procs):
    """The .py files shipped in final/ (trust_remote_code) do nothing at import but import, assign and define:
    no network, no file writes, no other calls at module level."""
    final = token_run(procs) / "final"
    code_files = sorted(final.glob("*.py"))
    assert {p.name for p in code_files} >= {"configuration_minibert.py", "modeling_minibert.py"}, code_files
    allowed_roots = {"torch", "transformers", "math", "typing", "dataclasses", "__future__", "collections",
                     "functools", "warnings", "enum", "copy", "itertools"}
    for path in code_files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # docstring
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if isinstance(node, ast.ImportFrom) and node.level:  # a sibling file of the folder
                    assert (final / f"{(node.module or '').split('.')[0]}.py").is_file(), (path.name, node.module)
                    continue
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for module in modules:
                    assert module.split(".")[0] in allowed_roots, (path.name, module)
                continue
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                calls = {ast.unparse(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)}
                assert calls <= {"dict", "tuple", "frozenset", "set", "list", "logging.get_logger"}, \
                    (path.name, ast.unparse(node))
                continue
            pytest.fail(f"{path.name}: top-level statement runs code at import: {ast.unparse(node)[:120]}")


def test_resume_loads_checkpoint_state_with_weights_only(data, procs, tmp_path, torch_load_flags,
                                                         fresh_accelerate_state):
    """accelerate's load_state (optimizer, scheduler, RNG) goes through torch.load(weights_only=True) and the
    model weights through safetensors when the token run is resumed from its step-2 checkpoint; the resumed run
    ends with the weights of the uninterrupted one."""
    import torch
    from safetensors.torch import load_file

    from minibert_hf.arguments import PretrainingArguments
    from minibert_hf.training import train

    token_run(procs)
    run = tmp_path / "run"
    shutil.copytree(procs.outputs["token run"], run)
    shutil.rmtree(run / "checkpoints" / f"step-{RUN_STEPS}")  # resume from step 2
    shutil.rmtree(run / "final")
    args = PretrainingArguments(train_file=[str(data / "train64.csv")], test_file=[str(data / "test.csv")],
                             tokenizer=str(data / "tokenizer"), preset="tiny", output_dir=str(run), batch_size=16,
                             max_steps=RUN_STEPS, logging_steps=1, checkpointing_steps=2,
                             resume_from_checkpoint="latest", progress=False)
    assert train(args)["step"] == RUN_STEPS
    assert torch_load_flags and all(flag is True for flag in torch_load_flags), torch_load_flags
    checkpoint = run / "checkpoints" / "step-2"
    assert (checkpoint / "model.safetensors").is_file() and not list(checkpoint.glob("pytorch_model*.bin"))
    straight = load_file(procs.outputs["token run"] / "final" / "model.safetensors")
    resumed = load_file(run / "final" / "model.safetensors")
    for name, tensor in straight.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-5, rtol=0), name


def resume_args(data, run, **overrides):
    from minibert_hf.arguments import PretrainingArguments

    return PretrainingArguments(**{**dict(train_file=[str(data / "train64.csv")], test_file=[str(data / "test.csv")],
                                       tokenizer=str(data / "tokenizer"), preset="tiny", output_dir=str(run),
                                       batch_size=16, max_steps=RUN_STEPS, logging_steps=1, checkpointing_steps=2,
                                       resume_from_checkpoint="latest", progress=False), **overrides})


def test_killed_while_writing_final_then_resume_latest(data, procs, tmp_path, fresh_accelerate_state):
    """The state a kill -9 during the final save leaves (last checkpoint complete, final/ only as a half-written
    temporary folder): resuming finishes with the uninterrupted run's weights and no temporary folder."""
    import torch
    from safetensors.torch import load_file

    from minibert_hf.training import train

    token_run(procs)
    run = tmp_path / "run"
    shutil.copytree(procs.outputs["token run"], run)
    shutil.rmtree(run / "final")
    (run / ".tmp-final").mkdir()
    (run / ".tmp-final" / "model.safetensors").write_bytes(b"half written")
    assert train(resume_args(data, run))["step"] == RUN_STEPS
    straight = load_file(procs.outputs["token run"] / "final" / "model.safetensors")
    resumed = load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(tensor, resumed[name]) for name, tensor in straight.items())
    assert not [p for p in run.rglob("*") if p.name.startswith((".tmp", ".old"))]


def test_corrupted_checkpoint_is_one_line(data, procs, tmp_path, capsys, fresh_accelerate_state):
    token_run(procs)
    run = tmp_path / "run"
    shutil.copytree(procs.outputs["token run"], run)
    shutil.rmtree(run / "final")
    (run / "checkpoints" / f"step-{RUN_STEPS}" / "optimizer.bin").write_bytes(b"\x80\x02 not a checkpoint" * 8)
    code, _, err = run_in_process("pretrain", pretrain_args(data, run, "--max-steps", RUN_STEPS,
                                                            "--resume-from-checkpoint", "latest"), capsys)
    one_error_line(code, err, 2, [f"step-{RUN_STEPS}", "cannot load the checkpoint (corrupted?)"])
    assert not (run / "final").exists()


def test_sigkill_mid_run_then_resume_latest_matches_a_straight_run(data, procs, tmp_path, capsys,
                                                                  fresh_accelerate_state):
    """kill -9 of a real pretrain.py once its first checkpoint exists: resuming from `latest` starts at that
    checkpoint's step and ends with the weights of an uninterrupted run (same options and seed)."""
    import torch
    from safetensors.torch import load_file

    from minibert_hf.training import train

    killed = procs.result("killed")
    procs.killer.join(timeout=60)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    run = procs.outputs["killed"]
    assert not (run / "final").exists() and (run / "metrics.jsonl").is_file()
    last = newest_checkpoint_step(run)
    assert 2 <= last < KILLED_STEPS
    capsys.readouterr()
    assert train(resume_args(data, run, max_steps=KILLED_STEPS))["step"] == KILLED_STEPS
    assert f"at step {last}." in capsys.readouterr().out  # "Resumed from .../step-N at step N."
    train(resume_args(data, tmp_path / "straight", max_steps=KILLED_STEPS, resume_from_checkpoint=None))
    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    resumed = load_file(run / "final" / "model.safetensors")
    for name, tensor in straight.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-5, rtol=0), name
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # the killed run's lines after its checkpoint were replaced, not duplicated


@pytest.mark.parametrize("error, fragments", [
    (OSError(28, "No space left on device", "/data/out/checkpoints/.tmp-step-8"),
     ["/data/out/checkpoints/.tmp-step-8", "No space left on device"]),
    (OSError(30, "Read-only file system", "/mnt/ro/final"), ["/mnt/ro/final", "Read-only file system"]),
    (PermissionError(13, "Permission denied", "/root/out"), ["/root/out", "Permission denied"]),
])
def test_run_cli_turns_disk_failures_into_one_line(capsys, error, fragments):
    from minibert_hf.cli import run_cli

    def main():
        raise error

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    one_error_line(exit_info.value.code, capsys.readouterr().err, 2, fragments)


def test_run_cli_keeps_the_traceback_of_a_bug():
    from minibert_hf.cli import run_cli

    def main():
        raise OSError(5, "Input/output error")  # not a disk-space / permission problem: a real failure

    with pytest.raises(OSError):
        run_cli(main)
