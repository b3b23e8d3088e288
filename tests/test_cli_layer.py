"""The scripts' own command-line logic, in process and fast: exit codes, defaults, options passed on to the library,
what is printed where and what is written. The library calls behind the scripts are replaced by recorders (the
library itself is tested elsewhere)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_inference import load_script  # noqa: E402

NO_MODEL = "someone/not-a-local-folder"  # not a path here: the scripts skip the local-folder check


def run(script: str, argv, capsys) -> tuple[int, str, list[str]]:
    """run_cli(script.main, argv): (exit code, stdout, the non-empty stderr lines)."""
    from minibert_hf.cli import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(load_script(script).main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, [line for line in err.splitlines() if line.strip()]


class Recorder:
    def __init__(self, result=None, error=None):
        self.calls, self.result, self.error = [], result, error

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return self.result() if callable(self.result) else self.result


# ------------------------------------------------------------------------------------------------ run_cli


def test_run_cli_ctrl_c_is_exit_130_with_one_line(capsys):
    from minibert_hf.cli import run_cli

    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    captured = capsys.readouterr()
    assert exit_info.value.code == 130
    assert captured.err.splitlines() == ["error: interrupted"] and captured.out == ""


def test_run_cli_exit_codes_and_return_values(capsys):
    from minibert_hf.cli import run_cli
    from minibert_hf.errors import MiniBertInputError

    for value in (0, 3):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: value)
        assert exit_info.value.code == value
    assert run_cli(lambda: True) is True and run_cli(lambda: None) is None  # not exit codes

    def bad():
        raise MiniBertInputError("bad value", file="data/train.csv", row=3, column="label")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(bad)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "data/train.csv" in lines[0] and "3" in lines[0] and "label" in lines[0] and "bad value" in lines[0]

    def missing():
        raise FileNotFoundError(2, "No such file or directory", "/no/such/file.csv")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(missing)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: /no/such/file.csv: No such file or directory"]


@pytest.mark.parametrize("argv, fragment", [
    (["nsp", "a", "b"], "--model"),  # a required option missing
    (["nsp", "a", "b", "--model", "m", "--bogus"], "--bogus"),  # an unknown option
    (["mlm", "a", "--model", "m", "--top-k", "two"], "--top-k"),  # not an int
])
def test_usage_errors_are_one_line_exit_2_naming_the_script(capsys, argv, fragment):
    code, out, err = run("predict", argv, capsys)
    assert code == 2 and out == "" and len(err) == 1
    assert err[0].startswith("error: predict.py: ") and err[0].endswith("(see --help)") and fragment in err[0]


# ------------------------------------------------------------------------------------------------ predict.py


class FakeModel:
    def to(self, device):
        self.device = device
        return self


@pytest.fixture
def fake_predict(monkeypatch):
    from minibert_hf import inference, model_folder

    load = Recorder(result=(FakeModel(), SimpleNamespace(mask_token="[MASK]")))
    mlm = Recorder(result=SimpleNamespace(sentence="the cat sat .",
                                          masks=[SimpleNamespace(candidates=[("cat", 0.5), ("dog", 0.25)])]))
    monkeypatch.setattr(model_folder, "load_model", load)
    monkeypatch.setattr(inference, "predict_mlm", mlm)
    return SimpleNamespace(load=load, mlm=mlm)


def test_predict_mlm_top_k_default_and_option_reach_predict_mlm(fake_predict, capsys):
    code, out, err = run("predict", ["mlm", "--model", NO_MODEL, "the [MASK] sat .", "--device", "cpu"], capsys)
    assert code == 0 and err == []
    assert fake_predict.load.calls[0][0] == (NO_MODEL,)
    assert fake_predict.mlm.calls[-1][1]["top_k"] == 5  # the documented default
    assert out.splitlines() == ["the cat sat .", "  [MASK] 1: cat (0.500), dog (0.250)"]
    assert run("predict", ["mlm", "--model", NO_MODEL, "the [MASK] .", "--top-k", "7", "--device", "cpu"],
               capsys)[0] == 0
    assert fake_predict.mlm.calls[-1][1]["top_k"] == 7


def test_predict_hub_failure_is_exit_1_and_a_bad_device_exit_2(monkeypatch, capsys):
    from minibert_hf import model_folder
    from minibert_hf.errors import HubError

    monkeypatch.setattr(model_folder, "load_model", Recorder(error=HubError("cannot reach the Hugging Face Hub")))
    code, out, err = run("predict", ["nsp", "--model", NO_MODEL, "A.", "B.", "--device", "cpu"], capsys)
    assert code == 1 and out == "" and err == ["error: cannot reach the Hugging Face Hub"]
    code, _, err = run("predict", ["nsp", "--model", NO_MODEL, "A.", "B.", "--device", "no-such-device"], capsys)
    assert code == 2 and len(err) == 1 and "--device no-such-device" in err[0]


# ------------------------------------------------------------------------------------------------ finetune.py


def fake_finetune_result(**overrides):
    fields = dict(accuracy=0.75, macro_f1=0.5, majority_baseline=0.5, precision=None, recall=None, f1=None,
                  num_test=4, best_epoch=1, steps=3, train_seconds=1.0)
    fields.update(overrides)
    return SimpleNamespace(**fields, to_dict=lambda: dict(fields))


@pytest.fixture
def fake_finetune(monkeypatch):
    from minibert_hf import finetuning, finetuning_data

    data = SimpleNamespace(train=[1] * 8, validation=[1] * 2, test=[1] * 4, source="topics.csv",
                           label_names=["no", "yes"])
    load = Recorder(result=data)
    tune = Recorder(result=fake_finetune_result)
    monkeypatch.setattr(finetuning_data, "load_task_data", load)
    monkeypatch.setattr(finetuning, "finetune", tune)
    return SimpleNamespace(load=load, tune=tune)


def test_finetune_passes_its_options_on_and_writes_the_results(fake_finetune, tmp_path, capsys):
    out_dir, summary = tmp_path / "out", tmp_path / "summary.json"
    code, out, err = run("finetune", [
        "--model", NO_MODEL, "--dataset", "topics.csv", "--epochs", "2", "--max-steps", "3", "--batch-size", "4",
        "--learning-rate", "2e-3", "--max-length", "16", "--dropout", "-1", "--pooling", "mean",
        "--test-fraction", "0.3", "--validation-fraction", "0.2", "--seed", "5", "--device", "cpu",
        "--output-dir", out_dir, "--results-json", summary, "--no-progress", "--from-scratch"], capsys)
    assert code == 0 and err == []
    (args, kwargs), = fake_finetune.load.calls
    assert args == ("sequence-classification", "topics.csv") and kwargs == dict(test_fraction=0.3, seed=5)
    (args, kwargs), = fake_finetune.tune.calls
    assert args[0] == NO_MODEL
    kwargs.pop("log")
    assert kwargs == dict(from_scratch=True, epochs=2.0, max_steps=3, batch_size=4, learning_rate=2e-3,
                          max_length=16, dropout=None, pooling="mean", validation_fraction=0.2, seed=5,
                          device="cpu", output_dir=str(out_dir), progress=False)  # dropout -1: the model's own
    assert json.loads(summary.read_text())["accuracy"] == 0.75
    lines = out.splitlines()
    assert lines[0] == "data: topics.csv: 8 train, 2 validation, 4 held-out, labels ['no', 'yes']"
    assert lines[-2].startswith("from scratch (random init): accuracy 0.7500  macro-F1 0.5000  (majority class")
    assert lines[-1] == f"wrote {out_dir / 'results.json'}"


def test_finetune_defaults(fake_finetune, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run("finetune", ["--model", NO_MODEL], capsys)
    assert code == 0 and err == []
    (args, kwargs), = fake_finetune.load.calls
    assert args == ("sequence-classification", None) and kwargs == dict(test_fraction=0.2, seed=0)
    (_, kwargs), = fake_finetune.tune.calls
    assert {k: kwargs[k] for k in ("from_scratch", "epochs", "max_steps", "batch_size", "learning_rate",
                                   "max_length", "dropout", "pooling", "validation_fraction", "seed", "device",
                                   "progress", "output_dir")} == dict(
        from_scratch=False, epochs=3.0, max_steps=None, batch_size=32, learning_rate=None, max_length=128,
        dropout=0.1, pooling=None, validation_fraction=0.1, seed=0, device=None, progress=True,
        output_dir=str(Path("outputs") / "finetune-rotten_tomatoes"))
    assert out.splitlines()[-2].startswith("pretrained: accuracy ")


def test_finetune_bad_threads_is_exit_2_and_a_hub_failure_exit_1(fake_finetune, monkeypatch, capsys):
    from minibert_hf.errors import HubError

    code, _, err = run("finetune", ["--model", NO_MODEL, "--threads", "0"], capsys)
    assert code == 2 and err == ["error: --threads must be at least 1, got 0"]
    assert fake_finetune.load.calls == []  # before any data is fetched
    fake_finetune.tune.error = HubError("the Hub refused: 401")
    code, _, err = run("finetune", ["--model", NO_MODEL], capsys)
    assert code == 1 and err == ["error: the Hub refused: 401"]


# ------------------------------------------------------------------------------------------------ push_to_hub.py


@pytest.fixture
def fake_push(monkeypatch):
    from minibert_hf import hub

    push = Recorder(result="https://huggingface.co/someone/x")
    monkeypatch.setattr(hub, "shareable_files", Recorder(result=["config.json", "model.safetensors"]))
    monkeypatch.setattr(hub, "push_to_hub", push)
    return push


def test_push_passes_private_and_the_commit_message_on(fake_push, capsys):
    code, out, err = run("push_to_hub", ["folder", "--repo-id", "someone/x"], capsys)
    assert code == 0 and err == []
    assert fake_push.calls[-1] == (("folder", "someone/x"), dict(private=False, commit_message="Upload MiniBERT model"))
    assert out.splitlines() == ["uploading 2 files from folder to someone/x: config.json, model.safetensors",
                                "uploaded: https://huggingface.co/someone/x"]
    assert run("push_to_hub", ["folder", "--repo-id", "someone/x", "--private", "--commit-message", "v2"],
               capsys)[0] == 0
    assert fake_push.calls[-1] == (("folder", "someone/x"), dict(private=True, commit_message="v2"))


def test_push_hub_refusal_is_exit_1(fake_push, capsys):
    from minibert_hf.errors import HubError

    fake_push.error = HubError("the Hub refused the upload (403)")
    code, out, err = run("push_to_hub", ["folder", "--repo-id", "someone/x"], capsys)
    assert code == 1 and err == ["error: the Hub refused the upload (403)"] and "uploaded:" not in out


# ------------------------------------------------------------------------------------------------ pretrain.py


def test_pretrain_divergence_and_hub_failures_are_exit_1(monkeypatch, capsys):
    from minibert_hf import training
    from minibert_hf.errors import HubError, TrainingDiverged

    for error in (TrainingDiverged("the loss was NaN for 5 steps"), HubError("cannot reach the Hub")):
        monkeypatch.setattr(training, "train", Recorder(error=error))
        code, out, err = run("pretrain", [], capsys)
        assert code == 1 and err == [f"error: {error}"] and out == ""


# ------------------------------------------------------------------------------------------------ prepare_data.py


def test_prepare_data_passes_its_source_options_on(monkeypatch, tmp_path, capsys):
    from minibert_hf import corpus, pretraining_data

    stats = {k: 1 for k in ("documents", "pairs_train", "pairs_test", "tokens", "vocab_size", "target_fraction",
                            "nsp_is_next_fraction", "seconds_total", "mb_per_second")}
    source = Recorder(result=("documents", {"name": "info"}))
    prepare = Recorder(result=dict(stats, extra=2))
    monkeypatch.setattr(corpus, "make_source", source)
    monkeypatch.setattr(pretraining_data, "prepare_pretraining_data", prepare)
    out = tmp_path / "out"
    code, printed, err = run("prepare_data", [
        "--table-files", "a.csv", "b.tsv", "--text-column", "body", "--output-dir", out, "--tokenizer", "tok",
        "--num-workers", "0", "--no-progress"], capsys)
    assert code == 0 and err == []
    assert source.calls == [((), dict(text_files=None, table_files=["a.csv", "b.tsv"], text_column="body",
                                      dataset=None, dataset_split="train"))]
    (args, kwargs), = prepare.calls
    assert args[0] == str(out)
    assert {k: kwargs[k] for k in ("documents", "source_info", "tokenizer", "show_progress", "num_workers")} == dict(
        documents="documents", source_info={"name": "info"}, tokenizer="tok", show_progress=False, num_workers=0)
    assert printed.splitlines() == [f"wrote {out / 'train.csv'}, test.csv, tokenizer/, stats.json",
                                    json.dumps(stats)]
    run("prepare_data", ["--text-files", "t.txt"], capsys)
    assert prepare.calls[-1][0][0] == str(Path("data") / "default")
    assert {k: prepare.calls[-1][1][k] for k in ("tokenizer", "show_progress", "num_workers")} == dict(
        tokenizer=None, show_progress=True, num_workers=None)


# ------------------------------------------------------------------------------------------------ baselines


def baseline_result():
    from minibert_hf.baselines import BaselineResult

    return BaselineResult(accuracy=0.5, macro_f1=0.4, num_train=8, num_test=4, num_features=12)


def test_tfidf_baseline_defaults_and_options_reach_the_library(monkeypatch, tmp_path, capsys):
    from minibert_hf import baselines, finetuning_data

    load = Recorder(result="data")
    fit = Recorder(result=baseline_result)
    monkeypatch.setattr(finetuning_data, "load_task_data", load)
    monkeypatch.setattr(baselines, "tfidf_logistic_regression", fit)
    code, out, err = run("tfidf_baseline", [], capsys)
    assert code == 0 and err == []
    assert [c[0] for c in load.calls] == [("sequence-classification", "rotten_tomatoes")] * 3
    assert [c[1] for c in load.calls] == [dict(test_fraction=0.2, seed=s) for s in (0, 1, 2)]
    assert all(c[1]["C"] == 1.0 and c[1]["analyzer"] is baselines.words for c in fit.calls)
    load.calls.clear()
    path = tmp_path / "r.json"
    code, out, _ = run("tfidf_baseline", ["--dataset", "d.csv", "--seeds", "4", "--test-fraction", "0.3",
                                          "--C", "2", "--results-json", path], capsys)
    assert code == 0 and load.calls == [(("sequence-classification", "d.csv"), dict(test_fraction=0.3, seed=4))]
    assert fit.calls[-1][1]["C"] == 2.0
    assert json.loads(path.read_text()) == [dict(seed=4, C=2.0, features="words", accuracy=0.5, macro_f1=0.4,
                                                 num_train=8, num_test=4, num_features=12)]
    assert out.splitlines()[0] == "seed 4: accuracy 0.5000  macro-F1 0.4000  (8 train, 4 held-out, 12 words)"


def test_linear_probe_defaults_and_options_reach_the_library(monkeypatch, tmp_path, capsys):
    from minibert_hf import baselines, finetuning_data

    load = Recorder(result="data")
    probe = Recorder(result=baseline_result)
    monkeypatch.setattr(finetuning_data, "load_task_data", load)
    monkeypatch.setattr(baselines, "linear_probe", probe)
    code, out, err = run("linear_probe", ["--model", NO_MODEL], capsys)
    assert code == 0 and err == []
    assert [c[1] for c in load.calls] == [dict(test_fraction=0.2, seed=s) for s in (0, 1, 2)]
    assert [(c[1]["from_scratch"], c[1]["seed"]) for c in probe.calls] == [
        (scratch, seed) for seed in (0, 1, 2) for scratch in (False, True)]
    assert all(c[0] == (NO_MODEL, "data") and (c[1]["C"], c[1]["pooling"], c[1]["max_length"]) == (1.0, None, 128)
               for c in probe.calls)
    probe.calls.clear()
    load.calls.clear()
    path = tmp_path / "r.json"
    code, _, err = run("linear_probe", ["--model", NO_MODEL, "--dataset", "d.csv", "--seeds", "3", "--C", "0.5",
                                        "--pooling", "mean", "--max-length", "32", "--test-fraction", "0.25",
                                        "--results-json", path], capsys)
    assert code == 0 and load.calls == [(("sequence-classification", "d.csv"), dict(test_fraction=0.25, seed=3))]
    assert {(c[1]["C"], c[1]["pooling"], c[1]["max_length"]) for c in probe.calls} == {(0.5, "mean", 32)}
    saved = json.loads(path.read_text())
    assert [r["seed"] for r in saved] == [3] and saved[0]["pretrained"]["accuracy"] == 0.5
    code, _, err = run("linear_probe", ["--model", NO_MODEL, "--threads", "0"], capsys)
    assert code == 2 and err == ["error: --threads must be at least 1, got 0"]


# ------------------------------------------------------------------------------------------------ compare_finetuning.py


@pytest.mark.parametrize("argv", [[], ["--model", NO_MODEL, "--from-json", "runs.json"]])
def test_compare_finetuning_needs_exactly_one_of_model_and_from_json(argv, capsys):
    code, out, err = run("compare_finetuning", argv, capsys)
    assert code == 2 and out == "" and len(err) == 1
    assert err[0].startswith("error: compare_finetuning.py: ") and "--from-json" in err[0]


def test_compare_finetuning_passes_its_options_on(monkeypatch, tmp_path, capsys):
    from minibert_hf import finetuning, finetuning_data

    load = Recorder(result="data")

    def result():
        return SimpleNamespace(f1=None, accuracy=0.5, macro_f1=0.5, train_seconds=1.0, to_dict=lambda: dict(
            accuracy=0.5, macro_f1=0.5, task="sequence-classification", dataset="d.csv", epochs=1.0,
            num_train=8, num_validation=2, num_test=4, from_scratch=False,
            settings=dict(dropout=0.1, seed=0, batch_size=8, pooling="mean", max_length=128, epochs=1.0)))

    tune = Recorder(result=result)
    monkeypatch.setattr(finetuning_data, "load_task_data", load)
    monkeypatch.setattr(finetuning, "finetune", tune)
    runs = tmp_path / "runs.json"
    code, out, err = run("compare_finetuning", [
        "--model", NO_MODEL, "--dataset", "d.csv", "--learning-rates", "1e-3", "--seeds", "7", "--epochs", "1",
        "--batch-size", "8", "--dropout", "0.2", "--pooling", "mean", "--results-json", runs], capsys)
    assert code == 0 and err == []
    assert load.calls == [(("sequence-classification", "d.csv"), dict(seed=7))]
    assert [(c[1]["from_scratch"], c[1]["learning_rate"], c[1]["dropout"], c[1]["epochs"], c[1]["batch_size"],
             c[1]["pooling"], c[1]["seed"]) for c in tune.calls] == [
        (False, 1e-3, 0.2, 1.0, 8, "mean", 7), (True, 1e-3, 0.2, 1.0, 8, "mean", 7)]
    assert [r["side"] for r in json.loads(runs.read_text())] == ["pretrained", "from scratch"]
    assert "# Fine-tuning (text classification)" in out
    tune.calls.clear()
    assert run("compare_finetuning", ["--model", NO_MODEL], capsys)[0] == 0
    assert [(c[1]["learning_rate"], c[1]["dropout"], c[1]["epochs"], c[1]["batch_size"], c[1]["seed"])
            for c in tune.calls if not c[1]["from_scratch"]] == [
        (lr, 0.1, 3.0, 32, seed) for seed in (0, 1, 2) for lr in (3e-4, 1e-3)]


# ------------------------------------------------------------------------------------------------ bench_report.py


def test_bench_report_reads_and_writes_the_bench_folder_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps({"runs": {}}))
    code, out, err = run("bench_report", [], capsys)
    assert code == 0 and err == []
    assert (tmp_path / "bench" / "results.md").read_text().startswith("# MiniBERT vs transformers")
    assert (tmp_path / "bench" / "results.png").stat().st_size > 0
    assert out.splitlines() == [f"wrote {Path('bench') / 'results.md'} and results.png from 0 runs"]
    code, _, err = run("bench_report", ["--output-dir", tmp_path / "none"], capsys)
    assert code == 2 and len(err) == 1 and "results.json" in err[0] and "cannot read the results" in err[0]
