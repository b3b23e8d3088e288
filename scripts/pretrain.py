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

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.cli import fail, run_cli  # noqa: E402
from minibert_hf.training import TrainingArguments  # noqa: E402

NSP_EXAMPLE = ("The river flows through the old town before it reaches the sea.",
               "Several bridges cross it in the centre of the town.")
MLM_EXAMPLE = "Paris is the [MASK] of France."


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + error; we print one line, exit 2
        fail(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    d = TrainingArguments()
    p = OneLineParser(prog="pretrain.py", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data (none given: the default corpus is prepared once into $MINIBERT_CACHE)")
    data.add_argument("--train-file", nargs="+", help="pretraining CSV(s) from prepare_data.py or the course lab")
    data.add_argument("--test-file", nargs="+", help="held-out CSV(s) (default: test.csv next to the train file)")
    data.add_argument("--tokenizer", help="tokenizer folder (default: tokenizer/ next to the train file)")
    data.add_argument("--masking", choices=("static", "dynamic"), default=d.masking,
                      help="static: the CSV's masks as written (the course lab); dynamic: fresh 80/10/10 masks "
                           "every time a row is served (RoBERTa)")
    data.add_argument("--mlm-probability", type=float, default=d.mlm_probability, help="for dynamic masking")
    data.add_argument("--vocab-size", type=int, default=d.vocab_size, help="default corpus only")
    data.add_argument("--max-seq-length", type=int, default=d.max_seq_length, help="default corpus only")
    data.add_argument("--num-workers", type=int, default=d.num_workers, help="DataLoader worker processes")

    model = p.add_argument_group("model")
    model.add_argument("--preset", default=d.preset, help="tiny, baby, mini or small")
    model.add_argument("--config-overrides", help='change preset fields, e.g. "hidden_size=256,hidden_dropout_prob=0"')
    model.add_argument("--init-from", help="start from a saved model folder instead of a fresh preset")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=d.epochs)
    opt.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps; overrides --epochs")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    opt.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="default: 2 x --batch-size")
    opt.add_argument("--gradient-accumulation-steps", type=int, default=d.gradient_accumulation_steps)
    opt.add_argument("--learning-rate", type=float, default=d.learning_rate, help="AdamW peak learning rate")
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay, help="not on biases and LayerNorm")
    opt.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="linear warm-up, then linear decay")
    opt.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="0: no clipping")
    opt.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=d.mixed_precision,
                     help="default: accelerate's config")
    opt.add_argument("--seed", type=int, default=d.seed)

    out = p.add_argument_group("output")
    out.add_argument("--output-dir", default=d.output_dir)
    out.add_argument("--overwrite-output-dir", action="store_true", help="start afresh in a folder with a run")
    out.add_argument("--logging-steps", type=int, default=d.logging_steps)
    out.add_argument("--eval-steps", type=int, default=d.eval_steps, help="0: after each epoch only")
    out.add_argument("--checkpointing-steps", type=int, default=d.checkpointing_steps,
                     help="save resumable state every N steps (and at the end); 0: none")
    out.add_argument("--save-total-limit", type=int, default=d.save_total_limit, help="keep the newest K checkpoints")
    out.add_argument("--resume-from-checkpoint", help="'latest' or a checkpoints/step-N folder")
    out.add_argument("--report-to", choices=("none", "tensorboard"), default=d.report_to)
    out.add_argument("--no-progress", dest="show_progress", action="store_false", help="no progress bar")
    out.add_argument("--push-to-hub", action="store_true", help="upload final/ at the end")
    out.add_argument("--hub-model-id", help="e.g. your-name/minibert")
    out.add_argument("--hub-private", action="store_true")
    return p


def main(argv=None) -> int:
    args = TrainingArguments.from_namespace(build_parser().parse_args(argv))
    args.check()  # options first: one line, exit 2, before anything is loaded

    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    # No transformers/huggingface_hub bars (e.g. "Loading weights" of --init-from, the upload): an error after
    # them would not be the only line. The training loop's own progress bar is plain tqdm and stays.
    hf_logging.disable_progress_bar()

    from minibert_hf.hub import HubError
    from minibert_hf.training import TrainingDiverged, train

    try:
        result = train(args)
    except TrainingDiverged as error:
        fail(str(error), code=1)
    except HubError as error:
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
                                   ("mlm_accuracy", "nsp_accuracy", "perplexity", "loss", "mlm_loss", "nsp_loss")))
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
