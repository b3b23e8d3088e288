"""The one atomic-write helper (temporary name, then rename) and the one reader of metrics.jsonl."""

import json
import os
import subprocess
import sys

import pytest

from minibert_hf import atomic
from minibert_hf.atomic import atomic_folder, copy_file, remove_stale_temporaries, temporary_name, write_text
from minibert_hf.errors import MiniBertInputError
from minibert_hf.metrics_log import eval_records, read_metrics


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_folder_appears_only_when_complete_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "final"
    with atomic_folder(target) as tmp:
        assert tmp.is_dir() and not target.exists()
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged
    assert hidden(tmp_path) == []


def test_a_failed_write_leaves_the_old_version_and_no_temporary(tmp_path):
    target = tmp_path / "final"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("good")
    with pytest.raises(OSError):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise OSError("disk full")
    assert (target / "a.txt").read_text() == "good"
    write_text(tmp_path / "notes.txt", "first")
    with pytest.raises(TypeError):
        write_text(tmp_path / "notes.txt", None)
    assert (tmp_path / "notes.txt").read_text() == "first"
    assert hidden(tmp_path) == []


def test_a_crashed_writers_leftover_is_cleared(tmp_path):
    target = tmp_path / "final"
    leftover = temporary_name(target)
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half written")
    with atomic_folder(target) as tmp:
        (tmp / "ok").write_text("ok")
    assert not leftover.exists() and sorted(p.name for p in target.iterdir()) == ["ok"]  # nothing of it kept


def test_stale_temporaries_of_dead_processes_only(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale, alive, fixed = (tmp_path / f".tmp-prepare.pid{dead}", tmp_path / f".tmp-prepare.pid{os.getpid()}",
                           tmp_path / ".tmp-step-14")
    for folder in (stale, alive, fixed):
        folder.mkdir()
    remove_stale_temporaries(tmp_path)
    assert not stale.exists() and alive.exists() and fixed.exists()


def test_a_killed_writers_temporary_is_stale_and_a_live_one_of_another_user_is_not(tmp_path, monkeypatch):
    """A process killed mid-write leaves `.tmp-<name>.pid<its pid>`, which the next clean-up removes; one whose
    process lives, but is another user's (os.kill: PermissionError), stays."""
    target = tmp_path / "stats.json"
    writer = ("import importlib.util, os, sys\n"  # atomic.py alone (stdlib only): no torch to import
              "spec = importlib.util.spec_from_file_location('atomic', sys.argv[1])\n"
              "atomic = importlib.util.module_from_spec(spec)\n"
              "spec.loader.exec_module(atomic)\n"
              "with atomic.atomic_path(sys.argv[2], unique=True) as tmp:\n"
              "    tmp.write_text('half')\n"
              "    os._exit(0)\n")
    killed = subprocess.run([sys.executable, "-c", writer, atomic.__file__, str(target)], capture_output=True,
                            text=True)
    assert killed.returncode == 0, killed.stderr
    [left] = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-stats.json.pid")]
    assert left.name != temporary_name(target, unique=True).name  # the writer's own process id, not ours
    remove_stale_temporaries(tmp_path)
    assert not left.exists() and not target.exists()

    others = tmp_path / ".tmp-prepare.pid4242"
    others.mkdir()

    def not_permitted(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_permitted)
    remove_stale_temporaries(tmp_path)
    assert others.exists()


def test_copy_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    copy_file(tmp_path / "a.png", tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes() == b"\x89PNG" and hidden(tmp_path) == []


def write_log(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


EVAL = {"step": 10, "epoch": 0.5, "eval_loss": 7.0, "eval_mlm_accuracy": 0.1, "eval_nsp_accuracy": 0.5,
        "eval_mlm_loss": 6.3, "eval_perplexity": 540.0}


def test_read_metrics_names_the_file_and_row_of_a_bad_line(tmp_path):
    log = write_log(tmp_path / "metrics.jsonl", [json.dumps({"step": 5, "train_loss": 9.0}), "", "[1, 2]"])
    with pytest.raises(MiniBertInputError, match=r"metrics.jsonl, row 3: not a JSON object"):
        read_metrics(log)
    write_log(log, [json.dumps(EVAL), json.dumps({"step": 20, "eval_loss": 6.0})])
    with pytest.raises(MiniBertInputError, match=r"row 2: eval record without a number for epoch"):
        read_metrics(log)


def test_eval_records_are_in_step_order(tmp_path):
    later = {**EVAL, "step": 20, "epoch": 1.0}
    write_log(tmp_path / "metrics.jsonl", [json.dumps(r) for r in (later, {"step": 5, "train_loss": 9.0}, EVAL)])
    assert [r["step"] for r in eval_records(tmp_path)] == [10, 20]


def test_the_loss_curve_plots_each_series_from_its_own_numbers(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from minibert_hf import metrics_log

    figures = []
    monkeypatch.setattr(metrics_log, "save_figure", lambda figure, png: figures.append(figure))
    later = {**EVAL, "step": 20, "epoch": 1.0, "eval_loss": 6.0, "eval_mlm_accuracy": 0.2, "eval_nsp_accuracy": 0.7}
    log = write_log(tmp_path / "metrics.jsonl", [json.dumps(r) for r in (
        {"step": 5, "train_loss": 9.0}, EVAL, {"step": 15, "train_loss": None, "skipped_steps": 1},  # all NaN
        {"step": 15, "train_loss": 8.0}, later)])
    metrics_log.write_loss_curve(log, tmp_path / "loss_curve.png")
    [figure] = figures
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
             for axis in figure.axes for line in axis.get_lines()}
    plt.close(figure)
    assert lines == {"train loss": ([5, 15], [9.0, 8.0]), "eval loss": ([10, 20], [7.0, 6.0]),
                     "MLM accuracy": ([10, 20], [0.1, 0.2]), "NSP accuracy": ([10, 20], [0.5, 0.7])}


def test_read_metrics_skips_only_an_unfinished_last_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps(EVAL) + "\n" + '{"step": 20, "train_lo')  # a run killed mid-write
    assert read_metrics(log) == [EVAL]
    assert read_metrics(tmp_path) == [EVAL]  # a run folder works too
    assert eval_records(tmp_path) == [EVAL]


def test_no_log_and_no_evals_are_one_line(tmp_path):
    with pytest.raises(MiniBertInputError, match="no metrics.jsonl here"):
        read_metrics(tmp_path)
    write_log(tmp_path / "metrics.jsonl", [json.dumps({"step": 5, "train_loss": 9.0})])
    with pytest.raises(MiniBertInputError, match="no eval records"):
        eval_records(tmp_path)
