"""scripts/prepare_data.py: the happy path in a real process, and bad input (one line, exit 2, nothing written).

Most bad-input cases run the script's ``main`` in-process through the same ``run_cli`` wrapper the script uses
(a subprocess costs seconds of imports each); two cases run as real subprocesses to check the whole path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minibert_hf.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "prepare_data.py"
FIXTURE = ROOT / "tests" / "fixtures" / "corpus.txt"

_spec = importlib.util.spec_from_file_location("prepare_data_script", SCRIPT)
prepare_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare_data)

SMALL = ["--vocab-size", "300", "--max-seq-length", "64", "--no-progress", "--num-workers", "0"]


def run_script(*args, env=None):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=environment, timeout=300)


def run_inprocess(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(prepare_data.main, [str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def test_end_to_end_in_a_subprocess(tmp_path):
    out = tmp_path / "out"
    result = run_script("--text-files", FIXTURE, "--output-dir", out, "--test-size", "0.1", *SMALL)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "test.csv", "tokenizer", "train.csv"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents"] == 39 and stats["pairs_train"] > 50 and stats["pairs_test"] > 0
    assert stats["vocab_size"] <= 300 and stats["max_seq_length"] == 64
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["pairs_train"] == stats["pairs_train"]

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
    from minibert_hf.pretraining_csv import load_pretraining_csv

    dataset = load_pretraining_csv(out / "train.csv", vocab_size=len(tokenizer), max_length=64)
    assert len(dataset) == stats["pairs_train"]


def test_bad_input_in_a_subprocess_is_one_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("Caf\xe9 society.\n".encode("latin-1"))
    out = tmp_path / "out"
    result = run_script("--text-files", bad, "--output-dir", out, *SMALL)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "train.csv").exists()


def write(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


CASES = [
    # (case id, how to build the arguments, fragments expected on the error line)
    ("missing-file", lambda t: ["--text-files", t / "nope.txt"], ["nope.txt", "does not exist"]),
    ("directory", lambda t: ["--text-files", t], ["is a directory"]),
    ("empty-file", lambda t: ["--text-files", write(t, "e.txt", b"")], ["e.txt", "no text"]),
    ("whitespace-only", lambda t: ["--text-files", write(t, "w.txt", b" \n\n\t \n")], ["w.txt", "no text"]),
    ("invalid-utf8", lambda t: ["--text-files", write(t, "l.txt", b"ok line\n\xff\xfe bad\n")],
     ["l.txt", "line 2", "UTF-8"]),
    ("binary", lambda t: ["--text-files", write(t, "b.bin", bytes(range(256)) * 4)], ["b.bin"]),
    ("single-sentence", lambda t: ["--text-files", write(t, "s.txt", b"Just one sentence here.\n")],
     ["s.txt", "too little text", "1 document"]),
    ("single-document", lambda t: ["--text-files", write(t, "d.txt", b"One paragraph. With two sentences.\n")],
     ["d.txt", "at least 2 documents"]),
    ("second-file-missing", lambda t: ["--text-files", FIXTURE, t / "gone.txt"], ["gone.txt", "does not exist"]),
    ("test-size-too-big", lambda t: ["--text-files", FIXTURE, "--test-size", "1.5"], ["--test-size"]),
    ("mlm-probability-zero", lambda t: ["--text-files", FIXTURE, "--mlm-probability", "0"], ["--mlm-probability"]),
    ("vocab-size-not-a-number", lambda t: ["--text-files", FIXTURE, "--vocab-size", "big"], ["--vocab-size"]),
    ("max-seq-length-tiny", lambda t: ["--text-files", FIXTURE, "--max-seq-length", "4"], ["--max-seq-length", "8"]),
    ("dupe-factor-zero", lambda t: ["--text-files", FIXTURE, "--dupe-factor", "0"], ["--dupe-factor"]),
    ("two-sources", lambda t: ["--text-files", FIXTURE, "--table-files", FIXTURE], ["only one of"]),
    ("tokenizer-missing", lambda t: ["--text-files", FIXTURE, "--tokenizer", t / "tok"], ["tok", "does not exist"]),
    ("tokenizer-empty-dir", lambda t: ["--text-files", FIXTURE, "--tokenizer", t], ["no tokenizer.json"]),
    ("table-missing-column", lambda t: ["--table-files", write(t, "x.csv", b"a,b\n1,2\n"), "--text-column", "body"],
     ["x.csv", "no column 'body'"]),
    ("output-dir-is-a-file", lambda t: ["--text-files", FIXTURE, "--output-dir", FIXTURE], ["cannot write"]),
]


@pytest.mark.parametrize("case, make_args, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, case, make_args, fragments):
    args = make_args(tmp_path)
    out = tmp_path / "out"
    if "--output-dir" not in args:
        args += ["--output-dir", out]
    code, err = run_inprocess([*SMALL, *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (out / "train.csv").exists() and not (out / "test.csv").exists()
    assert not list(tmp_path.rglob(".tmp-prepare*"))


def test_failed_run_keeps_previous_good_output(tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare_data.main(["--text-files", str(FIXTURE), "--output-dir", str(out), *SMALL]) == 0
    before = (out / "train.csv").read_bytes()
    bad = write(tmp_path, "one.txt", b"Single sentence.\n")
    code, err = run_inprocess(["--text-files", bad, "--output-dir", out, *SMALL], capsys)
    assert code == 2 and "too little text" in err
    assert (out / "train.csv").read_bytes() == before


def test_reusing_a_tokenizer_gives_identical_csvs(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert prepare_data.main(["--text-files", str(FIXTURE), "--output-dir", str(first), *SMALL]) == 0
    prepare_data.main(["--text-files", str(FIXTURE), "--output-dir", str(second), "--tokenizer",
                                str(first / "tokenizer"), *SMALL])
    assert (first / "train.csv").read_bytes() == (second / "train.csv").read_bytes()
    assert json.loads((second / "stats.json").read_text())["tokenizer_trained"] is False


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--text-files", "--output-dir", "--vocab-size", "--max-seq-length", "--mlm-probability",
                   "--test-size", "--seed", "--tokenizer", "--dupe-factor"):
        assert option in text
