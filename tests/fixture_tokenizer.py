"""A WordPiece tokenizer with a fixed vocabulary for the tests' fixture data, wrapped like the project's.

``train_tokenizer`` numbers its tokens in a fixed order, but on a corpus as small as the fixtures the ``tokenizers``
trainer still picks other tokens from one run to the next where merge counts tie. Tests that train on prepared rows
need the same ids every run (or their thresholds flake), so they take their vocabulary from here: the most frequent
whole words, every character alone and as a ``##`` piece, so no text is ``[UNK]``.
"""

from __future__ import annotations

from collections import Counter


def fixed_tokenizer(texts, vocab_size: int | None = None, model_max_length: int = 64):
    """Special ids, then the words of `texts` (the most frequent first, ties alphabetical; all of them without
    `vocab_size`) listed alphabetically, then the characters not among them, then ``##`` + each character."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    from minibert_hf.tokenizer import SPECIAL_TOKENS, UNK, build_hf_tokenizer

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True,
                                            lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({char for word in counts for char in word})
    ranked = sorted(counts, key=lambda word: (-counts[word], word))
    room = len(ranked) if vocab_size is None else vocab_size - len(SPECIAL_TOKENS) - 2 * len(chars)
    if room < 0:
        raise ValueError(f"vocab_size {vocab_size} cannot hold the {len(chars)} characters of the texts")
    words = sorted(ranked[:room])
    vocab = [*SPECIAL_TOKENS, *words, *(c for c in chars if c not in words), *("##" + c for c in chars)]
    backend = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token=UNK))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece(prefix="##")
    return build_hf_tokenizer(backend, model_max_length=model_max_length)


def fixture_texts(folder) -> list[str]:
    """The non-empty lines of the fixture prose files (tests/fixtures/*.txt), in file order."""
    from pathlib import Path

    return [line for path in sorted(Path(folder).glob("*.txt"))
            for line in path.read_text(encoding="utf-8").splitlines() if line]
