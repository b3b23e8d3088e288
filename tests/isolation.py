"""Code for child processes that must prove a checkpoint works without this package installed."""

import textwrap

# Prepended to a child script: `minibert_hf` becomes impossible to import (even though it is installed in the
# venv), and the script checks that it really is.
BLOCK_MINIBERT_HF = textwrap.dedent("""
    import importlib.abc, sys

    class RefuseMiniBertHF(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "minibert_hf" or name.startswith("minibert_hf."):
                raise ImportError("minibert_hf is blocked in this process")

    sys.meta_path.insert(0, RefuseMiniBertHF())
    try:
        import minibert_hf
        raise SystemExit("minibert_hf was importable")
    except ImportError:
        pass
""")
