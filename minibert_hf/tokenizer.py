"""Train and load the WordPiece tokenizer.

The tokenizer is trained with the ``tokenizers`` library (BERT normalisation: clean text, lowercase, strip
accents; BERT pre-tokenisation: split on whitespace and punctuation) and wrapped in transformers'
``BertTokenizer`` (the fast, ``tokenizers``-backed class in transformers 5), so a saved folder loads with
``AutoTokenizer.from_pretrained(folder)`` anywhere, without this package.

Special ids follow the course lab: ``[PAD]=0 [CLS]=1 [SEP]=2 [MASK]=3 [UNK]=4``.
``tokenizer(a, b)`` gives ``[CLS] a [SEP] b [SEP]`` with ``token_type_ids`` 0 for ``[CLS] a [SEP]`` and 1 for ``b [SEP]``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable, Iterator

from .errors import MiniBertInputError

PAD, CLS, SEP, MASK, UNK = "[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"
SPECIAL_TOKENS = (PAD, CLS, SEP, MASK, UNK)
PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID = range(5)
SPECIAL_IDS = (PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID)
NUM_SPECIAL = len(SPECIAL_IDS)  # word ids start here: ids below it are never MLM targets or random replacements

DEFAULT_VOCAB_SIZE = 8192
DEFAULT_MODEL_MAX_LENGTH = 128
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 1


def _batched_texts(texts: Iterable, batch_size: int = 1000) -> Iterator[list[str]]:
    """Yield lists of strings; accepts strings or documents (lists of strings)."""
    batch: list[str] = []
    for item in texts:
        if isinstance(item, str):
            batch.append(item)
        else:
            batch.extend(item)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_hf_tokenizer(backend, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH):
    """Wrap a trained ``tokenizers.Tokenizer`` in a transformers fast tokenizer with our special tokens."""
    from tokenizers import processors
    from transformers import BertTokenizer

    for token, expected in zip(SPECIAL_TOKENS, SPECIAL_IDS):
        actual = backend.token_to_id(token)
        if actual != expected:
            raise MiniBertInputError(f"tokenizer has {token} at id {actual}, expected {expected}")
    # [CLS] A [SEP] B [SEP], B's part of type 1 (transformers 5.24's BertTokenizer sets the same template itself;
    # this keeps it under any version that does not)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, CLS_ID), (SEP, SEP_ID)],
    )
    return BertTokenizer(
        tokenizer_object=backend,
        do_lower_case=True,
        strip_accents=True,
        pad_token=PAD,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
    )


def train_tokenizer(
    texts: Iterable,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    min_frequency: int = 2,
    show_progress: bool = False,
):
    """Train a WordPiece tokenizer on ``texts`` and return a transformers fast tokenizer.

    ``texts`` is an iterable of strings, or of documents (lists of strings); it is streamed once.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if int(vocab_size) < MIN_VOCAB_SIZE:
        raise MiniBertInputError(f"vocab size must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
    if int(model_max_length) < 3:
        raise MiniBertInputError(f"model_max_length must be at least 3, got {model_max_length}")
    backend = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=int(vocab_size),
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=show_progress,
    )
    seen = {"any": False}

    def _iterate():
        for batch in _batched_texts(texts):
            if any(text.strip() for text in batch):
                seen["any"] = True
            # Fifty texts joined into one: the same words (the pre-tokeniser splits at the line break), and the
            # trainer, which counts each text's words apart and then merges the counts, runs about 10% faster.
            yield ["\n".join(batch[i : i + 50]) for i in range(0, len(batch), 50)]

    backend.train_from_iterator(_iterate(), trainer=trainer)
    if not seen["any"]:
        raise MiniBertInputError("no text to train the tokenizer on")
    backend.model = models.WordPiece(canonical_vocab(backend.get_vocab()), unk_token=UNK,
                                     continuing_subword_prefix="##", max_input_chars_per_word=100)
    return build_hf_tokenizer(backend, model_max_length=model_max_length)


def canonical_vocab(vocab: dict) -> dict:
    """The same tokens numbered in a fixed order: the special ids, then whole words, then ``##`` pieces, each
    alphabetically. The ``tokenizers`` trainer numbers tokens in an order that changes from run to run (it follows
    hash-map iteration), and WordPiece's longest-match splitting does not depend on ids, so renumbering changes no
    tokenization and makes a preparation of the same text give the same ids every time."""
    words = sorted((token for token in vocab if token not in SPECIAL_TOKENS), key=lambda t: (t.startswith("##"), t))
    return {token: index for index, token in enumerate([*SPECIAL_TOKENS, *words])}


def continuation_ids(tokenizer) -> list[int]:
    """The ids of the pieces that continue a word (WordPiece's ``##`` pieces): what whole-word masking needs."""
    prefix = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    prefix = getattr(prefix, "continuing_subword_prefix", None) or "##"
    return sorted(index for token, index in tokenizer.get_vocab().items() if token.startswith(prefix))


_PRINTABLE_ASCII = re.compile(r"[ -~]*")  # BERT's normaliser changes nothing in these but the case
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9 ]")  # its pre-tokeniser on lowercased printable ASCII


class SentenceEncoder:
    """Encode a batch of texts into ids without special tokens, exactly as ``backend.encode_batch_fast`` does.

    For a tokenizer like the one `train_tokenizer` makes (BERT's lowercasing normaliser and pre-tokeniser, then
    WordPiece), a text of printable ASCII is split into words by one regular expression and each word's pieces
    come from a cache (a word's pieces do not depend on its neighbours; the words a batch adds are encoded
    together, as one text): on one core two to three times the library's rate on the default corpus, more once
    the cache is warm. Other texts (any other character, or an added token's text such as ``[SEP]``), and every
    text of any other tokenizer, go through the library. The cache holds at most ``max_cached_words`` words (it
    starts afresh when full), so memory stays flat in the corpus size.
    """

    def __init__(self, backend, max_cached_words: int = 100_000):
        self.backend = backend
        config = json.loads(backend.to_str())
        normalizer, pre_tokenizer = config.get("normalizer") or {}, config.get("pre_tokenizer") or {}
        added = [token["content"] for token in config.get("added_tokens", [])]
        self.fast = (normalizer.get("type") == "BertNormalizer" and normalizer.get("lowercase") is True
                     and normalizer.get("clean_text") is True and pre_tokenizer.get("type") == "BertPreTokenizer"
                     and config["model"]["type"] == "WordPiece" and config.get("truncation") is None
                     and config.get("padding") is None  # either would cut or pad the words' joined encoding
                     and not any(re.search(r"\s", content) for content in added))
        self.added = re.compile("|".join(map(re.escape, added)), re.IGNORECASE) if added else None  # raw or normalised
        self.max_cached_words = max_cached_words
        self.cache: dict[str, list[int]] = {}

    def _words(self, text):
        """The words of a text the cache can encode, or None when the library must."""
        if not _PRINTABLE_ASCII.fullmatch(text):
            return None
        if self.added is not None and self.added.search(text):
            return None
        return _ASCII_WORDS.findall(text.lower())

    def _pieces(self, words: list[str]) -> list[list[int]]:
        """Each word's ids, from one encoding of the words joined by spaces (the pre-tokeniser gives each back as
        one word, so ``word_ids`` says whose piece each id is): about twice the rate of a batch of one-word texts."""
        pieces = [[] for _ in words]
        if words:
            encoding = self.backend.encode(" ".join(words), add_special_tokens=False)
            for piece, word in zip(encoding.ids, encoding.word_ids):
                pieces[word].append(piece)
        return pieces

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if not self.fast:
            return [encoding.ids for encoding in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        split = [self._words(text) for text in texts]
        others = [text for text, words in zip(texts, split) if words is None]
        new = {word for words in split if words for word in words} - self.cache.keys()
        if len(self.cache) + len(new) > self.max_cached_words:  # start afresh
            self.cache = {}
            new = {word for words in split if words for word in words}
        new = list(new)
        table = self.cache if len(new) <= self.max_cached_words else {}  # a batch larger than the cache: its own
        table.update(zip(new, self._pieces(new)))
        rest = iter(self.backend.encode_batch_fast(others, add_special_tokens=False) if others else [])
        out = []
        for words in split:
            if words is None:
                out.append(next(rest).ids)
            else:
                ids = []
                for word in words:
                    ids += table[word]
                out.append(ids)
        return out


def load_tokenizer(path, model_max_length: int | None = None):
    """Load a tokenizer folder written by ``save_pretrained`` (ours or any BERT-style one with our special ids)."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not os.path.exists(path):
        raise MiniBertInputError("tokenizer folder does not exist", file=path)
    if not os.path.isdir(path):
        raise MiniBertInputError("not a tokenizer folder (expected a directory with tokenizer.json)", file=path)
    if not any(os.path.exists(os.path.join(path, name)) for name in ("tokenizer.json", "vocab.txt")):
        raise MiniBertInputError("no tokenizer.json (or vocab.txt) in this folder", file=path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MiniBertInputError(f"cannot load tokenizer: {error}", file=path) from error
    check_special_ids(tokenizer, source=path)
    if model_max_length is not None:
        tokenizer.model_max_length = int(model_max_length)
    return tokenizer


def check_special_ids(tokenizer, source=None) -> None:
    """Raise if the tokenizer does not use the course's special ids."""
    for token, expected in zip(SPECIAL_TOKENS, SPECIAL_IDS):
        actual = tokenizer.convert_tokens_to_ids(token)
        if actual != expected:
            raise MiniBertInputError(
                f"tokenizer maps {token} to id {actual}; MiniBERT needs "
                "[PAD]=0 [CLS]=1 [SEP]=2 [MASK]=3 [UNK]=4 (train one with prepare_data.py)",
                file=source,
            )
