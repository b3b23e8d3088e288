#!/usr/bin/env python
"""Pretrain MiniBERT (masked-language modelling + next-sentence prediction) with Accelerate.

    accelerate launch scripts/pretrain.py --preset mini --output-dir outputs/minibert     # no data: default corpus
    accelerate launch --num_processes 2 --cpu scripts/pretrain.py --train-file data/train.csv --max-steps 500
    python scripts/pretrain.py --train-file data/train.csv --tokenizer data/tokenizer --epochs 3

Writes OUTPUT/epoch-N/ and OUTPUT/final/ (save_pretrained folders with code, tokenizer and model card),
OUTPUT/checkpoints/step-N/ (resumable state), OUTPUT/metrics.jsonl and OUTPUT/loss_curve.png.
Exit codes: 0 done, 2 bad input or options (one line on stderr), 1 training diverged or the Hub refused the upload.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.arguments import PretrainingArguments  # noqa: E402
from minibert_hf.cli import dataclass_parser, fail, run_cli  # noqa: E402

NSP_EXAMPLE = ("The river flows through the old town before it reaches the sea.",
               "Several bridges cross it in the centre of the town.")
MLM_EXAMPLE = "Paris is the [MASK] of France."


def build_parser():
    """The command line, one flag per field of PretrainingArguments (help texts included)."""
    return dataclass_parser(PretrainingArguments, prog="pretrain.py", description=__doc__.split("\n\n")[0])


def main(argv=None) -> int:
    (args,) = build_parser().parse_args_into_dataclasses(argv)

    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    # No transformers/huggingface_hub bars (e.g. "Loading weights" of --init-from, the upload): an error after
    # them would not be the only line. The training loop's own progress bar is plain tqdm and stays.
    hf_logging.disable_progress_bar()

    from minibert_hf.errors import HubError, TrainingDiverged
    from minibert_hf.training import train

    try:
        result = train(args)  # checks every option first: one line, exit 2, before anything is loaded
    except (TrainingDiverged, HubError) as error:
        fail(str(error), code=1)
    if PartialState().is_main_process:
        show_result(result)
    return 0


def show_result(result: dict) -> None:
    from minibert_hf.errors import UserError
    from minibert_hf.inference import predict_mlm, predict_nsp
    from minibert_hf.modeling_minibert import MiniBertForPreTraining
    from minibert_hf.tokenizer import load_tokenizer

    print(f"\nfinal model: {result['final']}  (after {result['step']} steps)")
    print("held-out: " + ", ".join(f"{key} {result[key]:.4f}" for key in
                                   ("mlm_accuracy", "mlm_accuracy_at_mask", "nsp_accuracy", "perplexity", "loss",
                                    "mlm_loss", "nsp_loss")))
    model = MiniBertForPreTraining.from_pretrained(result["final"]).eval()
    tokenizer = load_tokenizer(result["final"])
    try:
        nsp = predict_nsp(*NSP_EXAMPLE, model, tokenizer)
        print(f"predict_nsp({NSP_EXAMPLE[0]!r}, {NSP_EXAMPLE[1]!r}):\n"
              f"  {nsp.sentence()} (probability that B follows A: {nsp.probability:.2f})")
        mlm = predict_mlm(MLM_EXAMPLE, model, tokenizer)
        print(f"predict_mlm({MLM_EXAMPLE!r}):\n  {mlm}")
    except UserError as error:  # e.g. a model trained on short rows; the examples are a demonstration only
        print(f"(examples skipped: {error})")


if __name__ == "__main__":
    run_cli(main)
