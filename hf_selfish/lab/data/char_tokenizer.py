"""The character tokenizer: a `tokenizers` WordLevel model over single characters.

Ids follow sorted character order (nanoGPT's ``sorted(set(text))``); ``Split("", "isolated")`` makes every
character, spaces and newlines included, its own token and ``Fuse`` decodes by plain concatenation. It
has no special tokens, so the model vocabulary is exactly the character set (65 for tinyshakespeare). A
character outside the vocabulary is an error, never an unknown token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ...frequency import display_token

CHAR_TOKENIZER = "char"
# A simulated second language writes main-language character i as chr(SMALL_LANGUAGE_CODEPOINT + i) (see lowres):
# Supplementary Private Use Area-A, 65,534 code points, never in real text.
SMALL_LANGUAGE_CODEPOINT = 0xF0000


def build_char_tokenizer(text: str | None = None, *, chars: Sequence[str] | None = None) -> PreTrainedTokenizerFast:
    """A character-level `PreTrainedTokenizerFast` with no special tokens.

    Args:
        text: build the vocabulary from this text: ids in sorted character order (nanoGPT's ``sorted(set(text))``).
        chars: or give the vocabulary itself: distinct single characters, id ``i`` = ``chars[i]``.
    """
    if (text is None) == (chars is None):
        raise ValueError("give exactly one of `text` (to collect its characters) or `chars` (the vocabulary).")
    chars = sorted(set(text)) if text is not None else list(chars)
    if not chars:
        raise ValueError("the character vocabulary is empty: the text holds no characters.")
    bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
    if bad:
        raise ValueError(f"a character vocabulary holds single characters, got {bad[:10]!r}.")
    if len(set(chars)) != len(chars):
        duplicates = sorted({c for c in chars if chars.count(c) > 1})
        raise ValueError(f"the character vocabulary repeats {duplicates!r}.")

    backend = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # concatenate, no spaces added
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)


def char_vocabulary(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The characters of a character tokenizer, in id order; ValueError for a tokenizer of multi-character tokens."""
    vocab = tokenizer.get_vocab()
    by_id = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in by_id] != list(range(len(by_id))) or any(len(t) != 1 for t in by_id):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a character tokenizer (its vocabulary holds multi-character "
            "tokens or gaps in its ids); build one with build_char_tokenizer."
        )
    return by_id


def is_char_tokenizer(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether every token of ``tokenizer`` is one character (ids 0..V-1 without gaps)."""
    try:
        char_vocabulary(tokenizer)
    except ValueError:
        return False
    return True


def unknown_characters(texts: str | Iterable[str], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Characters of ``texts`` that are not tokens of the (character) tokenizer, sorted."""
    seen = _characters(texts)
    return sorted(seen - tokenizer.get_vocab().keys())


def check_characters(texts: str | Iterable[str], tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise a ValueError listing the characters of ``texts`` outside the tokenizer's vocabulary."""
    missing = unknown_characters(texts, tokenizer)
    if missing:
        shown = ", ".join(repr(c) for c in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise ValueError(
            f"{len(missing)} character(s) outside the tokenizer's vocabulary of {len(tokenizer)}: {shown}. "
            "Build the character tokenizer from text that includes them (train and validation), or clean the text."
        )


def _characters(texts: str | Iterable[str]) -> set[str]:
    if isinstance(texts, str):
        return set(texts)
    seen: set[str] = set()
    for text in texts:
        seen.update(text)
    return seen


def token_labels(tokenizer: PreTrainedTokenizerBase, vocab_size: int | None = None) -> list[str]:
    """A readable label for every token id (plot axes, reports): ``vocab_size`` labels (default ``len(tokenizer)``).

    Character tokenizers: whitespace is spelled out (``\\n``, ``␣``) and a small-language character is
    shown as its main-language character with a ``₂`` suffix. Other tokenizers: their token strings.
    Ids past the tokenizer (a model vocabulary of ``2 * len(tokenizer)`` under the simulation, or
    padding rows of an embedding) are labelled ``<token>₂`` and ``<id N>``.
    """
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if not is_char_tokenizer(tokenizer):
        labels = [str(t) for t in tokens]
    else:
        labels = []
        for token in tokens:
            offset = ord(token) - SMALL_LANGUAGE_CODEPOINT
            labels.append(_char_label(tokens[offset]) + "₂" if 0 <= offset < len(tokens) // 2 else _char_label(token))
    vocab_size = len(labels) if vocab_size is None else vocab_size
    if vocab_size == 2 * len(labels):  # the simulation with a tokenizer of the main language only
        return labels + [label + "₂" for label in labels]
    return labels[:vocab_size] + [f"<id {i}>" for i in range(len(labels), vocab_size)]


def _char_label(char: str) -> str:
    return display_token(char, space="␣")
