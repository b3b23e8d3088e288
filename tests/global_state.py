"""Process-wide settings a test could change and forget to put back: torch's thread count, log levels, progress bars.

The conftest checks that every test and every module leaves them as it found them; `restoring` wraps a script's
`main` run in-process (a CLI may set them for its own process, a test must not keep them)."""

from __future__ import annotations

import contextlib
import functools
import logging


def snapshot() -> dict:
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    return {"torch threads": torch.get_num_threads(), "root log level": logging.getLogger().level,
            "accelerate log level": logging.getLogger("accelerate").level,
            "transformers verbosity": hf_logging.get_verbosity(),
            "transformers progress bars": hf_logging.is_progress_bar_enabled(),
            "datasets progress bars": not datasets.utils.are_progress_bars_disabled()}


def restore(saved: dict) -> None:
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(saved["torch threads"])
    logging.getLogger().setLevel(saved["root log level"])
    logging.getLogger("accelerate").setLevel(saved["accelerate log level"])
    hf_logging.set_verbosity(saved["transformers verbosity"])
    (hf_logging.enable_progress_bar if saved["transformers progress bars"] else hf_logging.disable_progress_bar)()
    (datasets.enable_progress_bars if saved["datasets progress bars"] else datasets.disable_progress_bars)()


def changed_since(before: dict) -> dict:
    after = snapshot()
    return {key: (before[key], after[key]) for key in before if after[key] != before[key]}


def restoring(function):
    """`function` (e.g. a script's main) with the process-wide settings put back after it returns or raises."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        saved = snapshot()
        try:
            return function(*args, **kwargs)
        finally:
            restore(saved)
    return wrapper


@contextlib.contextmanager
def torch_threads(count: int):
    """torch uses `count` threads inside the block (tiny models on a shared 2-core machine: one avoids
    oversubscription), and as many as before after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
