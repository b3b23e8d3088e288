"""The WordPiece tokenizer: special ids, pair encoding, AutoTokenizer round trip, bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from minibert_hf.errors import MiniBertInputError
from minibert_hf.tokenizer import (
    SPECIAL_TOKENS,
    SentenceEncoder,
    check_special_ids,
    load_tokenizer,
    train_tokenizer,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tokenizer():
    text = FIXTURES.joinpath("corpus.txt").read_text(encoding="utf-8")
    return train_tokenizer([line for line in text.splitlines() if line], vocab_size=600, model_max_length=96)


def test_special_ids_and_vocab_size(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id,
            tokenizer.unk_token_id) == (0, 1, 2, 3, 4)
    assert 100 < len(tokenizer) <= 600
    assert tokenizer.model_max_length == 96


def test_pair_encoding_is_cls_a_sep_b_sep_with_segments(tokenizer):
    encoded = tokenizer("The lighthouse keeper", "kept a logbook.")
    ids, types = encoded["input_ids"], encoded["token_type_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    first_sep = tokens.index("[SEP]")
    assert tokenizer.decode(ids[1:first_sep]) == "the lighthouse keeper"
    assert tokenizer.decode(ids[first_sep + 1 : -1]) == "kept a logbook."
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
    assert encoded["attention_mask"] == [1] * len(ids)
    single = tokenizer("kept a logbook.")
    assert single["input_ids"][0] == 1 and single["input_ids"][-1] == 2 and set(single["token_type_ids"]) == {0}


def test_bert_normalisation_lowercase_and_accents(tokenizer):
    assert tokenizer("Café NAÏVE")["input_ids"] == tokenizer("cafe naive")["input_ids"]
    assert "[UNK]" not in tokenizer.convert_ids_to_tokens(tokenizer("The harbour bread")["input_ids"])
    pieces = tokenizer.tokenize("lighthouses")
    assert pieces[0] == "lighthouse" or any(p.startswith("##") for p in pieces)


def test_autotokenizer_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 96
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == type(tokenizer).__name__
    pair = ("Snow leopards are rarely seen.", "Their coats blend with the rocks!")
    assert reloaded(*pair) == tokenizer(*pair)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.model_max_length == 96 and reloaded.mask_token == "[MASK]"
    batch = reloaded(["a short one", "a somewhat longer sentence here"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == 0 and batch["attention_mask"][0, -1].item() == 0
    assert load_tokenizer(tmp_path, model_max_length=64).model_max_length == 64


def test_train_tokenizer_accepts_documents_and_rejects_bad_options():
    docs = [["First paragraph of a document.", "Second paragraph."], ["Another document entirely."]] * 5
    tok = train_tokenizer(docs, vocab_size=120)
    assert tok("another document")["input_ids"][1:-1] != [4, 4]
    with pytest.raises(MiniBertInputError, match="vocab size"):
        train_tokenizer(["some text"], vocab_size=3)
    with pytest.raises(MiniBertInputError, match="no text"):
        train_tokenizer(["", "   "], vocab_size=100)


def test_min_frequency_keeps_a_word_seen_once_out_of_the_vocabulary():
    texts = ["the cat sat on the mat"] * 3 + ["a quokka smiled"]
    assert "quokka" not in train_tokenizer(texts, vocab_size=300).get_vocab()  # min_frequency 2 by default
    assert "quokka" in train_tokenizer(texts, vocab_size=300, min_frequency=1).get_vocab()


def test_a_hash_sign_in_the_text_is_a_word_not_a_continuation_piece():
    """Whole-word masking reads continuation_ids: "#" (punctuation, a word of its own) must not be one of them,
    though it starts like the "##" prefix; "###" (a "#" continuing a word) is."""
    from fixture_tokenizer import fixed_tokenizer

    from minibert_hf.tokenizer import continuation_ids

    tokenizer = fixed_tokenizer(["issue #5 is fixed", "see #12 too"])
    vocab = tokenizer.get_vocab()
    assert tokenizer.tokenize("issue #5") == ["issue", "#", "5"]
    ids = continuation_ids(tokenizer)
    assert vocab["#"] not in ids and vocab["###"] in ids
    assert ids == sorted(i for t, i in vocab.items() if t.startswith("##"))


def test_load_tokenizer_bad_folders(tmp_path, tokenizer):
    with pytest.raises(MiniBertInputError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(MiniBertInputError, match="not a tokenizer folder"):
        load_tokenizer(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MiniBertInputError, match="no tokenizer.json") as caught:
        load_tokenizer(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(caught.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(MiniBertInputError, match="cannot load tokenizer"):
        load_tokenizer(broken)


def test_tokenizer_with_other_special_ids_is_rejected(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4, "hello": 5}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    other = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                    cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    other.save_pretrained(tmp_path)
    with pytest.raises(MiniBertInputError, match=r"\[PAD\]=0"):
        load_tokenizer(tmp_path)
    with pytest.raises(MiniBertInputError):
        check_special_ids(other)


def test_training_twice_on_the_same_text_gives_the_same_ids():
    """The tokenizers trainer numbers its tokens in hash-map order, different in every process and run; we renumber
    them, so the same text always gives the same vocabulary file and the same ids (at 100 tokens the trainer picks
    the same token set each time on this corpus; only its numbering varied)."""
    lines = [line for line in FIXTURES.joinpath("corpus.txt").read_text(encoding="utf-8").splitlines() if line]
    vocabularies = [train_tokenizer(lines, vocab_size=100).get_vocab() for _ in range(3)]
    assert vocabularies[0] == vocabularies[1] == vocabularies[2]


def test_train_tokenizer_learns_the_vocabulary_of_the_library_trainer_on_the_texts_one_by_one():
    """train_tokenizer feeds the trainer fifty texts joined as one (faster); the words it counts, and so the
    tokens it learns, are those of the texts given one by one, words at the ends of texts included."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    lines = [line for line in FIXTURES.joinpath("corpus.txt").read_text(encoding="utf-8").splitlines() if line]
    lines += ["end" + str(i) for i in range(60)] + ["start" + str(i) + " x" for i in range(60)]  # texts' edges
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=100, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                        continuing_subword_prefix="##", show_progress=False)
    backend.train_from_iterator(lines, trainer=trainer)
    assert set(train_tokenizer(lines, vocab_size=100).get_vocab()) == set(backend.get_vocab())


def test_the_vocabulary_is_numbered_specials_then_words_then_pieces_and_numbering_changes_no_split(tokenizer):
    from tokenizers import models

    from minibert_hf.tokenizer import canonical_vocab

    vocab = tokenizer.get_vocab()
    by_id = sorted(vocab, key=vocab.get)
    words = [t for t in by_id[len(SPECIAL_TOKENS):] if not t.startswith("##")]
    pieces = [t for t in by_id[len(SPECIAL_TOKENS):] if t.startswith("##")]
    assert by_id == [*SPECIAL_TOKENS, *sorted(words), *sorted(pieces)] and words and pieces
    assert canonical_vocab(dict(reversed(list(vocab.items())))) == vocab

    # WordPiece splits by longest match: numbering the same tokens backwards gives the same pieces everywhere
    backward = {token: len(vocab) - 1 - index for token, index in vocab.items()}
    backend = tokenizer.backend_tokenizer
    renumbered = type(backend).from_str(backend.to_str())
    renumbered.model = models.WordPiece(backward, unk_token="[UNK]", continuing_subword_prefix="##")
    text = FIXTURES.joinpath("corpus.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line] + ["Unheard-of wordings: lighthouses, zebras, 1999!"]
    for line in lines:
        assert renumbered.encode(line, add_special_tokens=False).tokens == tokenizer.tokenize(line), line


# Texts where a shortcut around the library could go wrong: case, punctuation of every kind, digits, the underscore,
# tabs and control characters (BERT's normaliser drops or turns them into spaces), added tokens written raw or
# lowercased, accents and other non-ASCII text, a word past WordPiece's 100 characters ([UNK]), empty text.
TRICKY_TEXTS = [
    "Hello, World!", "It's 3.14 -- isn't it?", "snake_case and CamelCase", "e.g. U.S.A. (1999)", "abc123def 42",
    "~`^|{}<>@#$%&*+=/\\", "tab\there", "new\nline", "ctrl\x01char", "del\x7fchar", "[SEP] inside", "a [mask] here",
    "[UNK]", "Ünïcödé café", "\u201ccurly quotes\u201d", "emoji \U0001f642 here", "x" * 150, "", "   ", "double  space ",
]


def test_sentence_encoder_gives_the_library_ids(tokenizer):
    """The word-cache encoder gives the ids of the tokenizers library on every text, cold and warm, and with a
    cache too small for one batch; the cache holds only printable-ASCII words and never grows past its bound."""
    backend = tokenizer.backend_tokenizer
    texts = TRICKY_TEXTS + FIXTURES.joinpath("more_docs.txt").read_text(encoding="utf-8").splitlines()
    expected = [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    encoder = SentenceEncoder(backend)
    assert encoder.fast
    assert encoder(texts) == expected
    assert encoder(texts) == expected  # now from the cache
    assert {"hello", ",", "3", "snake", "_"} <= encoder.cache.keys()
    assert all(word.isascii() and word.isprintable() and word == word.lower() for word in encoder.cache)
    assert not {"[", "sep", "]", "unk"} & encoder.cache.keys()  # texts holding added tokens went to the library
    small = SentenceEncoder(backend, max_cached_words=5)
    assert [small([text])[0] for text in texts] == expected and len(small.cache) <= 5
    assert small(texts) == expected and len(small.cache) <= 5


def test_sentence_encoder_leaves_other_tokenizers_to_the_library():
    """A tokenizer without BERT's lowercasing normaliser (here none: case matters) is encoded by the library."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, "Hello", "hello", "!", "##o"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    encoder = SentenceEncoder(backend)
    assert not encoder.fast
    assert encoder(["Hello hello!"]) == [[5, 6, 7]]


def test_sentence_encoder_leaves_a_truncating_tokenizer_to_the_library(tokenizer):
    """With truncation (or padding) switched on, the library cuts each text; the encoder's one joined encoding of
    many words would be cut instead, so such a tokenizer is left to the library; so is one with an added token of
    several words, which two words joined by a space could spell."""
    from tokenizers import AddedToken, Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.enable_truncation(3)
    encoder = SentenceEncoder(backend)
    assert not encoder.fast
    texts = ["the cat sat on the warm mat", "hello world, hello again"]
    expected = [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    assert encoder(texts) == expected and all(len(ids) == 3 for ids in expected)
    phrase = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    phrase.add_tokens([AddedToken("cat sat", normalized=True)])
    assert not SentenceEncoder(phrase).fast
