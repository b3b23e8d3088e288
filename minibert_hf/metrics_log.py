"""``metrics.jsonl``, a run's log: one JSON object per line (training logs and evaluations), and its plot.

:class:`MetricsLog` writes it during training, :func:`read_metrics` is the one reader (the model card, the loss
curve and ``scripts/compare_runs.py`` all go through it), and :func:`write_loss_curve` draws ``loss_curve.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_path, write_text
from .errors import MiniBertInputError

# The numbers every evaluation record carries (besides its eval_* metrics).
EVAL_KEYS = ("step", "epoch", "eval_loss", "eval_mlm_accuracy", "eval_nsp_accuracy", "eval_mlm_loss",
             "eval_perplexity")


def read_metrics(path) -> list[dict]:
    """Every record of a ``metrics.jsonl``, in file order.

    A line that is not a JSON object raises :class:`MiniBertInputError` naming the file and line (``row``); so does
    an evaluation record (one with ``eval_loss``) without a number for each of :data:`EVAL_KEYS`. A last line with
    no newline yet is a write in progress (or cut short by a kill) and is left out.
    """
    given = Path(path)
    path = given / "metrics.jsonl" if given.is_dir() else given
    if not path.is_file():
        raise MiniBertInputError("no metrics.jsonl here; expected a pretrain.py --output-dir", file=given)
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # the piece after the last newline is unfinished
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise MiniBertInputError("not a JSON object", file=path, row=number)
        if "eval_loss" in record:
            missing = [key for key in EVAL_KEYS if not isinstance(record.get(key), (int, float))]
            if missing:
                raise MiniBertInputError(f"eval record without a number for {', '.join(missing)}", file=path,
                                         row=number)
        records.append(record)
    return records


def eval_records(path) -> list[dict]:
    """The evaluation records of a run, in step order; at least one, or a one-line error."""
    evals = sorted((r for r in read_metrics(path) if "eval_loss" in r), key=lambda r: r["step"])
    if not evals:
        path = Path(path)
        raise MiniBertInputError("no eval records (was the run evaluated?)",
                                 file=path / "metrics.jsonl" if path.is_dir() else path)
    return evals


class MetricsLog:
    """OUTPUT/metrics.jsonl: one JSON object per log or eval event (main process); mirrored to trackers.

    Resuming at step N keeps the records up to step N and drops the rest (the resumed run writes them again). An
    evaluation at step N that the resumed run repeats (to finish an epoch or the run) is not written twice: the
    weights are the same, and so are its numbers.
    """

    def __init__(self, path: Path, accelerator, steps_per_epoch: int, truncate_after: int = 0):
        self.path, self.accelerator, self.steps_per_epoch = Path(path), accelerator, steps_per_epoch
        self.repeated_eval_step = None  # the resume step, when its evaluation is already in the file
        if accelerator.is_main_process:
            kept = []
            if truncate_after and self.path.is_file():
                kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after]
            if any("eval_loss" in r and r["step"] == truncate_after for r in kept):
                self.repeated_eval_step = truncate_after
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, **values) -> dict:
        record = {"step": step, "epoch": step / self.steps_per_epoch, **values}
        record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        if "eval_loss" in record and step == self.repeated_eval_step:
            return record  # repeated after a resume: logged before the interruption
        if self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        self.accelerator.log(numbers, step=record["step"])
        return record


def write_loss_curve(metrics_path, png_path) -> None:
    """Train and eval loss (left) and eval MLM/NSP accuracy (right) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    evals = [r for r in records if "eval_loss" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        left.plot(*zip(*train), label="train loss", alpha=0.8)
    if evals:
        left.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
        right.plot([r["step"] for r in evals], [r["eval_mlm_accuracy"] for r in evals], "o-", label="MLM accuracy")
        right.plot([r["step"] for r in evals], [r["eval_nsp_accuracy"] for r in evals], "o-", label="NSP accuracy")
    left.set(xlabel="step", ylabel="loss (MLM + NSP)", title="Loss")
    right.set(xlabel="step", ylabel="accuracy", title="Held-out accuracy", ylim=(0, 1))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    save_figure(fig, png_path)


def save_figure(fig, png_path, dpi: int = 100) -> None:
    """Save a matplotlib figure as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(png_path, unique=True) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
