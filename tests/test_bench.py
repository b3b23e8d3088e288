"""scripts/bench.py runs end to end on a tiny config and writes its reports (no timings are asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"
CORPUS = ROOT / "tests" / "fixtures" / "corpus.txt"
TINY = ["--vocab-size", "300", "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2",
        "--intermediate-size", "64", "--max-position-embeddings", "64", "--batch-size", "4",
        "--max-seq-length", "32", "--loader-batches", "3", "--threads", "1"]


def run_bench(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out, data = tmp / "out", tmp / "data"
    done = run_bench("--steps", "2", "--warmup", "1", "--memory-steps", "1", "--text-files", str(CORPUS),
                     "--data-dir", str(data), "--output-dir", str(out), *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, data


def test_bench_writes_json_markdown_and_png(bench_run):
    out, data = bench_run
    results = json.loads((out / "results.json").read_text())
    run = results["runs"]["fp32-t1"]
    training = run["training"]
    for which in ("ours", "hf"):
        assert training[which]["median_ms"] > 0
        assert training[which]["tokens_per_second"] > 0
        assert training[which]["held_out_loss_end"] > 0
        assert run["memory"][which]["peak_rss_mb"] > 0
    assert training["steps_each"] == 2
    assert training["speedup_median_of_pairs"] > 0
    assert run["inference"]["speedup_median_of_pairs"] > 0
    assert run["data_prep"]["mb_per_second"] > 0
    assert run["loader"]["collate_batch_batches_per_second"] > 0
    assert run["config"]["hidden_size"] == 32 and run["config"]["batch_size"] == 4
    # the prepared data was kept for the next run
    assert (data / "train.csv").is_file()

    markdown = (out / "results.md").read_text()
    assert "| fp32-t1 |" in markdown
    assert "python scripts/bench.py" in markdown
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_bench_models_start_from_the_same_weights(bench_run):
    """Ours is copied into HF's layout, so before training both give the same MLM logits on real tokens."""
    out, _ = bench_run
    run = json.loads((out / "results.json").read_text())["runs"]["fp32-t1"]
    assert run["weights"].startswith("same initial weights")
    assert run["inference"]["logits_max_abs_diff_real_tokens"] < 1e-4


def test_bench_from_csv_adds_a_run(bench_run):
    out, data = bench_run
    done = run_bench("--steps", "1", "--warmup", "0", "--csv", str(data / "train.csv"), "--no-memory",
                     "--text-files", str(CORPUS), "--prep-repeat", "2",
                     "--name", "from-csv", "--output-dir", str(out), *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert set(runs) == {"fp32-t1", "from-csv"}
    assert runs["from-csv"]["memory"] is None
    assert runs["from-csv"]["data"]["csv"] == "data/train.csv"  # no folder of this machine in the results
    # the timed preparation ran on the corpus twice over
    prep_once, prep_twice = runs["fp32-t1"]["data_prep"], runs["from-csv"]["data_prep"]
    assert prep_twice["repeat"] == 2
    assert abs(prep_twice["raw_mb"] - 2 * prep_once["raw_mb"]) < 0.01
    assert prep_twice["pairs"] > prep_once["pairs"]
    assert "| from-csv |" in (out / "results.md").read_text()


def test_bench_missing_csv_is_one_line_error(tmp_path):
    missing = tmp_path / "nope.csv"
    done = run_bench("--csv", str(missing), "--output-dir", str(tmp_path / "out"), *TINY)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.csv" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_bench_rejects_bad_steps(tmp_path):
    done = run_bench("--steps", "0", "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "--steps" in done.stderr
