"""scripts/compare_runs.py: the table and the plot of several runs' held-out metrics, and its one-line errors."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compare_runs.py"
spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def write_run(folder: Path, evals, train_lines=2, at_mask=False):
    """A metrics.jsonl as pretrain.py writes it: train records between eval records."""
    folder.mkdir(parents=True)
    lines = []
    for step, mlm, nsp in evals:
        for _ in range(train_lines):
            lines.append({"step": step, "epoch": step / 100, "train_loss": 7.0, "tokens_per_second": 1000.0})
        lines.append({"step": step, "epoch": step / 100, "eval_loss": 7.0, "eval_mlm_loss": 6.0 - mlm,
                      "eval_nsp_loss": 0.69, "eval_mlm_accuracy": mlm, "eval_nsp_accuracy": nsp,
                      **({"eval_mlm_accuracy_at_mask": 0.8 * mlm} if at_mask else {}),
                      "eval_perplexity": 400.0 - 100 * mlm})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


@pytest.fixture
def run(capsys):
    """The script's CLI in this process: exit code, stdout and stderr, as a subprocess would give them."""
    def call(*args):
        with pytest.raises(SystemExit) as exit_info:
            compare_runs.run_cli(compare_runs.main, [str(arg) for arg in args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=exit_info.value.code, stdout=out.out, stderr=out.err)
    return call


def test_script_runs_as_a_program(tmp_path):
    a = write_run(tmp_path / "a", [(50, 0.10, 0.52)])
    proc = subprocess.run([sys.executable, str(SCRIPT), str(a)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "| a | 50 | 0.50 | 10.0% |  | 52.0% |" in proc.stdout  # no at-[MASK] metric


def test_table_and_plot_of_two_runs(tmp_path, run):
    a = write_run(tmp_path / "a", [(50, 0.10, 0.52), (100, 0.15, 0.61)], at_mask=True)
    b = write_run(tmp_path / "b", [(50, 0.12, 0.50), (75, 0.20, 0.72)])  # stopped early: its last eval counts
    proc = run(a, b, "--labels", "lr 1e-3", "lr 2e-3", "--png", tmp_path / "out" / "runs.png",
               "--markdown", tmp_path / "out" / "runs.md", "--x-axis", "step")
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "out" / "runs.md").read_text()
    assert proc.stdout == table
    rows = table.splitlines()
    assert rows[0].startswith("| run | steps | epochs | MLM accuracy | at [MASK] | NSP accuracy")
    assert rows[2] == "| lr 1e-3 | 100 | 1.00 | 15.0% | 12.0% | 61.0% | 5.850 | 385 |"
    assert rows[3] == "| lr 2e-3 | 75 | 0.75 | 20.0% |  | 72.0% | 5.800 | 380 |"  # a run without the metric
    assert (tmp_path / "out" / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left


def test_folder_names_are_the_default_labels(tmp_path, run):
    a = write_run(tmp_path / "static", [(10, 0.1, 0.5)])
    proc = run(a)
    assert proc.returncode == 0 and "| static | 10 |" in proc.stdout


def test_bad_runs_are_one_line_exit_2(tmp_path, run):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run(empty)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {empty}: no metrics.jsonl here; expected a pretrain.py --output-dir"]

    untrained = write_run(tmp_path / "untrained", [])
    (untrained / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_loss": 9.0}) + "\n")
    proc = run(untrained)
    assert proc.returncode == 2 and "no eval records" in proc.stderr and len(proc.stderr.splitlines()) == 1

    broken = write_run(tmp_path / "broken", [(10, 0.1, 0.5)])
    with open(broken / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 20, "eval_loss": 7.0}\n{"step": 30, oops\n')
    proc = run(broken)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert f"{broken / 'metrics.jsonl'}, row 4: eval record without a number for epoch" in proc.stderr

    good = write_run(tmp_path / "good", [(10, 0.1, 0.5)])
    proc = run(good, "--labels", "one", "two", "--png", tmp_path / "never.png")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --labels: 2 names for 1 runs"
    assert not (tmp_path / "never.png").exists()


def test_x_axis_share_puts_runs_of_different_lengths_on_one_scale(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from compare_runs import x_values

    from minibert_hf.metrics_log import eval_records

    short = eval_records(write_run(tmp_path / "short", [(100, 0.1, 0.5), (200, 0.2, 0.6)]))
    long = eval_records(write_run(tmp_path / "long", [(150, 0.1, 0.5), (300, 0.2, 0.6), (600, 0.3, 0.7)]))
    assert x_values(short, "share") == [0.5, 1.0] and x_values(long, "share") == [0.25, 0.5, 1.0]
    assert x_values(long, "step") == [150, 300, 600]


def test_each_panel_plots_its_own_metric(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(compare_runs, "save_figure", lambda figure, png: figures.append(figure))
    evals = compare_runs.eval_records(write_run(tmp_path / "a", [(50, 0.10, 0.52), (100, 0.15, 0.61)]))
    compare_runs.plot([("a", evals)], tmp_path / "runs.png", x_axis="step")
    [figure] = figures
    panels = {axis.get_title(): [(line.get_label(), list(line.get_xdata()), list(line.get_ydata()))
                                 for line in axis.get_lines()] for axis in figure.axes}
    plt.close(figure)
    assert panels == {"held-out MLM accuracy": [("a", [50, 100], [0.10, 0.15])],
                      "held-out NSP accuracy": [("a", [50, 100], [0.52, 0.61])],
                      "held-out MLM loss": [("a", [50, 100], [6.0 - 0.10, 6.0 - 0.15])]}
