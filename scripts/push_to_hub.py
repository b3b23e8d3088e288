#!/usr/bin/env python
"""Upload a saved MiniBERT folder (weights, config, code, tokenizer, card) to the Hugging Face Hub.

    python scripts/push_to_hub.py outputs/minibert-default/final --repo-id your-name/minibert [--private]

The token comes from HF_TOKEN or `hf auth login`; it is never printed. Exit codes: 0 uploaded, 1 the Hub could not
be reached or refused, 2 bad input (not a complete model folder, bad repo id).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert_hf.cli import ArgumentParser, fail, run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(prog="push_to_hub.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a save_pretrained folder, e.g. outputs/minibert-default/final")
    parser.add_argument("--repo-id", required=True, help="Hub repository, 'name' or 'namespace/name'")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--commit-message", default="Upload MiniBERT model")
    args = parser.parse_args(argv)

    from minibert_hf.errors import HubError
    from minibert_hf.hub import push_to_hub, shareable_files

    try:
        files = shareable_files(args.folder)
        print(f"uploading {len(files)} files from {args.folder} to {args.repo_id}: {', '.join(files)}", flush=True)
        url = push_to_hub(args.folder, args.repo_id, private=args.private, commit_message=args.commit_message)
    except HubError as error:
        fail(str(error), code=1)
    print(f"uploaded: {url}")
    return 0


if __name__ == "__main__":
    run_cli(main)
