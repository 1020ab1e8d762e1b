"""A byte-level BPE tokenizer trained with `tokenizers` on a run's training text (GPT-2's scheme, small)."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["BPE_TOKENIZER", "END_OF_TEXT", "build_bpe_tokenizer"]

BPE_TOKENIZER = "bpe"
END_OF_TEXT = "<|endoftext|>"  # the one special token: the document separator (EOS), as in GPT-2


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Byte-level BPE over ``texts``: the 256 bytes, ``<|endoftext|>`` and ``vocab_size - 257`` merges.

    Every string can be encoded (bytes are the base alphabet); it saves and reloads with `AutoTokenizer`.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 258:
        raise ValueError(
            f"bpe_vocab_size must be an integer of at least 258 (256 bytes + EOS + 1 merge), got {vocab_size!r}"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END_OF_TEXT, clean_up_tokenization_spaces=False)
