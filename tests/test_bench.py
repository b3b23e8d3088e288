"""scripts/bench.py runs end to end on a tiny config and writes its reports (no timings are asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"
sys.path.insert(0, str(ROOT / "scripts"))  # bench.py's modules, for the tests that call them directly
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
    done = run_bench("--steps", "4", "--warmup", "1", "--memory-steps", "1", "--text-files", str(CORPUS),
                     "--data-dir", str(data), "--output-dir", str(out), "--dropout", "0", "--learning-rate", "3e-3",
                     *TINY)
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
    assert training["steps_each"] == 4
    assert training["speedup_median_of_pairs"] > 0
    assert run["inference"]["speedup_median_of_pairs"] > 0
    assert run["data_prep"]["mb_per_second"] > 0
    # HF projects padding and every position onto the vocabulary: more FLOPs per step than ours
    assert training["flop_ratio"] > 1.2
    assert training["hf"]["gflop_per_step"] == pytest.approx(training["ours"]["gflop_per_step"]
                                                             * training["flop_ratio"], rel=0.01)
    assert run["matmul_peak"]["gflops_median"] > 0
    peak = run["matmul_peak"]["gflops_median"]
    for which in ("ours", "hf"):
        assert 0 < training[which]["share_of_peak"] < 1
        # achieved_gflops is rounded to 0.1 and share_of_peak to 4 decimals: they agree within both roundings
        assert training[which]["achieved_gflops"] == pytest.approx(
            training[which]["share_of_peak"] * peak, rel=0, abs=0.05 + 0.00005 * peak + 1e-9)
    assert run["loader"]["collate_batch_batches_per_second"] > 0
    assert run["config"]["hidden_size"] == 32 and run["config"]["batch_size"] == 4
    # the prepared data was kept for the next run
    assert (data / "train.csv").is_file()

    markdown = (out / "results.md").read_text()
    assert "| fp32-t1 |" in markdown
    assert "python scripts/bench.py" in markdown
    # the data table gives the whole preparation's rate and each of its two phases' own
    prep = run["data_prep"]
    assert 0 < prep["seconds_tokenizer"] and 0 < prep["seconds_pairs"]
    assert prep["seconds_tokenizer"] + prep["seconds_pairs"] <= prep["seconds"]
    row = next(line for line in markdown.splitlines() if line.startswith("| fp32-t1 |") and "(x1)" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:4] == [str(prep["mb_per_second"]), f"{prep['raw_mb'] / prep['seconds_tokenizer']:.2f}",
                          f"{prep['raw_mb'] / prep['seconds_pairs']:.2f}"]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_bench_models_start_from_the_same_weights_and_learn_alike(bench_run):
    """Ours is copied into HF's layout, so before training both give the same MLM logits on real tokens; trained
    on the same batches (no dropout), both reach the same held-out MLM loss (HF's NSP pooler, which ours does not
    have, is the only part that starts apart)."""
    out, _ = bench_run
    run = json.loads((out / "results.json").read_text())["runs"]["fp32-t1"]
    assert run["weights"].startswith("same initial weights")
    assert run["inference"]["logits_max_abs_diff_real_tokens"] < 1e-4
    ours, hf = run["training"]["ours"], run["training"]["hf"]
    assert abs(ours["held_out_mlm_loss_start"] - hf["held_out_mlm_loss_start"]) < 1e-4
    assert abs(ours["held_out_loss_start"] - hf["held_out_loss_start"]) < 0.05  # the NSP part starts apart
    # Both trained, and to the same held-out MLM loss. (The size and even the sign of the change vary between runs:
    # the fixture's WordPiece vocabulary is not the same from one training to the next, so neither are the rows.)
    moved = {name: abs(m["held_out_mlm_loss_start"] - m["held_out_mlm_loss_end"]) for name, m in (("ours", ours),
                                                                                              ("hf", hf))}
    assert min(moved.values()) > 0.005, moved
    assert abs(ours["held_out_mlm_loss_end"] - hf["held_out_mlm_loss_end"]) < 0.03, (ours, hf)


def test_bench_from_csv_adds_a_run(bench_run):
    out, data = bench_run
    done = run_bench("--steps", "1", "--warmup", "0", "--csv", str(data / "train.csv"), "--no-memory",
                     "--text-files", str(CORPUS), "--prep-repeat", "2", "--shape", "mini-pre", "--rows", "long",
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
    # long rows: every row is cut at --max-seq-length (32), so a batch has no padding; ours is the mini preset
    run = runs["from-csv"]
    assert run["config"]["rows"] == "long" and run["config"]["shape"] == "mini-pre"
    assert run["training"]["real_tokens_per_batch_mean"] == run["training"]["padded_tokens_per_batch_mean"] == 4 * 32
    assert run["weights"].startswith("independent")


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


def bench_batch(vocab=300, rows=3, seq=20):
    import torch

    torch.manual_seed(0)
    ids = torch.randint(5, vocab, (rows, seq))
    mask = torch.ones(rows, seq, dtype=torch.long)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    labels = torch.full((rows, seq), -100)
    labels[:, 2] = ids[:, 2]
    labels[0, 7] = ids[0, 7]
    types = torch.zeros(rows, seq, dtype=torch.long)
    types[:, 3:] = 1
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels,
                next_sentence_label=torch.zeros(rows, dtype=torch.long))


@pytest.mark.parametrize("which", ["ours", "ours-mini-preset", "hf"])
def test_flops_counted_from_shapes_match_torch_flop_counter(which):
    """bench_flops' count of a forward and of a training step equals what torch's FlopCounterMode records while
    the model runs (attention dropout on, so attention runs through matrix products the counter sees)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForPreTraining

    from bench_flops import forward_flops, training_flops

    from minibert_hf import MiniBertConfig, MiniBertForPreTraining

    shape = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = {"ours": lambda: MiniBertForPreTraining(MiniBertConfig(**shape)),
             "ours-mini-preset": lambda: MiniBertForPreTraining(MiniBertConfig.from_preset("mini", **shape)),
             "hf": lambda: BertForPreTraining(BertConfig(**shape, attn_implementation="sdpa"))}[which]()
    model.train()
    batch = bench_batch()
    ours = which != "hf"
    with FlopCounterMode(display=False) as counter:
        model(**batch)
    assert counter.get_total_flops() == forward_flops(model.config, batch, ours)
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    assert counter.get_total_flops() == training_flops(model.config, batch, ours)


def test_long_rows_join_consecutive_pairs_and_cut_at_the_length():
    from bench import long_rows

    def pair(start, n, label):
        ids = [2] + list(range(start, start + n))  # [CLS] then n tokens
        return {"input_ids": ids, "token_type_ids": [0] * (n // 2 + 1) + [1] * (n - n // 2),
                "labels": [-100] + [i if i % 3 == 0 else -100 for i in ids[1:]], "next_sentence_label": label}

    pairs = [pair(10, 6, 1), pair(20, 6, 0), pair(30, 6, 0), pair(40, 3, 1), pair(50, 9, 0), pair(60, 2, 1)]
    rows = long_rows(pairs, 12)
    assert [len(r["input_ids"]) for r in rows] == [12, 12]  # the last, too short, is left out
    first = rows[0]
    assert first["input_ids"] == [2, *range(10, 16), *range(20, 25)]  # the second pair without its [CLS]
    assert first["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1]
    assert first["labels"] == [-100] + [i if i % 3 == 0 else -100 for i in first["input_ids"][1:]]
    assert first["next_sentence_label"] == 1 and rows[1]["next_sentence_label"] == 0
    assert rows[1]["input_ids"] == [2, *range(30, 36), 40, 41, 42, 50, 51]  # three pairs, cut


def test_shapes_set_the_defaults_and_explicit_fields_win():
    from bench import model_configs, parse_args

    mini = parse_args(["--shape", "mini"])
    assert (mini.hidden_size, mini.vocab_size, mini.intermediate_size, mini.batch_size, mini.dropout) == (
        128, 8192, 512, 16, 0.0)
    assert parse_args(["--shape", "bert-base", "--num-layers", "2"]).num_layers == 2
    assert parse_args([]).hidden_size == 256
    ours, hf = model_configs(parse_args(["--shape", "mini-pre"]), 8192)
    assert (ours.layer_norm_position, ours.position_embedding_type, ours.nsp_input) == ("pre", "rotary", "segments")
    assert (hf.hidden_size, hf.num_hidden_layers) == (ours.hidden_size, ours.num_hidden_layers) == (128, 4)
    ours, _ = model_configs(mini, 8192)
    assert (ours.layer_norm_position, ours.position_embedding_type) == ("post", "learned")


def test_device_helpers_run_on_the_cpu():
    """bench.py's device code (autocast dtype, batch transfer, synchronisation) on the CPU, so it cannot rot
    where no GPU is at hand."""
    import torch

    from bench import autocast, synchronize, to_device

    layer = torch.nn.Linear(4, 4)
    with autocast("cpu", True):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast("cpu", False):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    batch = bench_batch()
    moved = to_device(batch, "cpu")
    assert set(moved) == set(batch) and all(torch.equal(moved[k], batch[k]) for k in batch)
    synchronize("cpu")


def test_gpu_bench_without_cuda_says_so_in_one_line_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("bench-gpu: no CUDA device") and len(done.stdout.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_gpu_bench_set_covers_both_shapes_eager_and_compiled_in_bf16():
    from bench import parse_args, run_name
    from bench_gpu import bench_commands

    commands = bench_commands(10, "out", csv="data/train.csv")
    parsed = [parse_args(c) for c in commands]
    assert {(a.shape, a.compile) for a in parsed} == {("bench", False), ("bench", True), ("bert-base", False),
                                                      ("bert-base", True)}
    assert all(a.device == "cuda" and a.bf16 and a.fused_adamw and a.csv == "data/train.csv" for a in parsed)
    assert sorted(run_name(a) for a in parsed) == [  # one results entry per run, beside the CPU runs
        "bert-base-cuda-bf16-compile-fusedadamw", "bert-base-cuda-bf16-fusedadamw", "cuda-bf16-compile-fusedadamw",
        "cuda-bf16-fusedadamw"]
    bert_base = next(a for a in parsed if a.shape == "bert-base")
    assert (bert_base.hidden_size, bert_base.num_layers, bert_base.num_heads, bert_base.vocab_size) == (
        768, 12, 12, 30522)


def test_bench_read_grows_the_csv_reads_it_back_and_serves_batches(bench_run, tmp_path):
    """scripts/bench_read.py: the CSV repeated to the asked size, every row read back, batches served; no folder
    of this machine in what it writes (no timings asserted)."""
    _, data = bench_run
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_read.py"), "--csv", str(data / "train.csv"),
                           "--size-mb", "0.3", "--batch-size", "4", "--serve-batches", "5", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "read.json").read_text())
    source = (data / "train.csv").read_bytes()
    header = source.index(b"\n") + 1
    rows, body = source.count(b"\n") - 1, len(source) - header
    copies = -(-(int(0.3 * 2**20) - header) // body)
    assert copies > 1 and result["rows"] == rows * copies  # repeated past the size, and every row read back
    assert result["read"]["rows_per_second"] > 0 and result["serve"]["batches"] == 5
    text = (out / "read.md").read_text() + (out / "read.json").read_text()
    assert str(tmp_path) not in text and "--size-mb 0.3" in text
