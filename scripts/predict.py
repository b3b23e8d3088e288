#!/usr/bin/env python
"""Ask a pretrained MiniBERT whether one sentence follows another (nsp), or to fill in [MASK]s (mlm).

    python scripts/predict.py nsp --model outputs/minibert-default/final "The sun set." "It grew dark."
    python scripts/predict.py mlm --model outputs/minibert-default/final "The river flows into the [MASK]."

--model is a folder written by save_pretrained (pretrain.py's final/ or epoch-N/) or a Hub repo id.
Exit codes: 0 answered, 2 bad input (texts, model folder), 1 the Hub could not provide the model.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.cli import ArgumentParser, fail, run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("task", choices=("nsp", "mlm"), help="nsp: does TEXT2 follow TEXT1? mlm: fill the [MASK]s")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="two sentences for nsp, one sentence for mlm")
    parser.add_argument("--model", required=True, help="model folder or Hub repo id")
    parser.add_argument("--top-k", type=int, default=5, help="candidates shown per [MASK] (mlm, default 5)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)

    wanted = 2 if args.task == "nsp" else 1
    if len(args.texts) != wanted:
        fail(f"{args.task} takes {'two sentences' if wanted == 2 else 'one sentence'}, got {len(args.texts)}")

    import torch
    from transformers.utils import logging as hf_logging

    from minibert_hf.errors import HubError
    from minibert_hf.inference import predict_mlm, predict_nsp
    from minibert_hf.model_folder import load_model

    from huggingface_hub.utils import logging as hub_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # no "Retrying in 2s" lines: a failure is reported once, below
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.empty(0, device=device)  # fails now, with one line, if the device is not usable
    except (RuntimeError, AssertionError) as error:
        fail(f"--device {args.device}: not usable here ({str(error).splitlines()[0] if str(error) else 'no detail'})")
    try:
        model, tokenizer = load_model(args.model)
    except HubError as error:
        fail(str(error), code=1)
    model.to(device)

    if args.task == "nsp":
        result = predict_nsp(args.texts[0], args.texts[1], model, tokenizer)
        print(result.sentence())
        print(f"probability that the second sentence follows the first: {result.probability:.3f}")
    else:
        result = predict_mlm(args.texts[0], model, tokenizer, top_k=args.top_k)
        print(result.sentence)
        for number, mask in enumerate(result.masks, 1):
            candidates = ", ".join(f"{token} ({p:.3f})" for token, p in mask.candidates)
            print(f"  {tokenizer.mask_token} {number}: {candidates}")
    return 0


if __name__ == "__main__":
    run_cli(main)
