"""The one atomic-write helper (temporary name, then rename) and the one reader of metrics.jsonl."""

import json
import os
import subprocess
import sys

import pytest

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
    assert not leftover.exists() and (target / "ok").is_file()


def test_stale_temporaries_of_dead_processes_only(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale, alive, fixed = (tmp_path / f".tmp-prepare.pid{dead}", tmp_path / f".tmp-prepare.pid{os.getpid()}",
                           tmp_path / ".tmp-step-14")
    for folder in (stale, alive, fixed):
        folder.mkdir()
    remove_stale_temporaries(tmp_path)
    assert not stale.exists() and alive.exists() and fixed.exists()


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
