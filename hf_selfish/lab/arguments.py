"""Dataclasses for the model and data halves of a run (the training half is `SelfishTrainingArguments`).

They are parsed together by `transformers.HfArgumentParser` from a YAML recipe plus command-line
overrides, the way `run_clm.py` parses `ModelArguments` / `DataTrainingArguments`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TEXT_UNITS = ("paragraph", "line")  # what the low-resource simulation assigns to a language
# What one document is (documents end with the tokenizer's EOS): "auto" is a whole .txt file (or the built-in
# text), a row of a json/parquet file or a `datasets` dataset.
DOCUMENT_UNITS = ("auto", "file", "row", "paragraph")
# What a run evaluates on: the held-out validation split, or a tuning split cut from the end of the train split
# (hyperparameters chosen on it never saw the reported validation split).
EVAL_SPLITS = ("validation", "tune")


def _positive_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value > 0


@dataclass
class ModelArguments:
    """Which causal LM to train: a pretrained checkpoint, or a config built from scratch."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Pretrained checkpoint (Hub id or local folder). None: build from a config."}
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file inside `model_name_or_path` to load (dequantized to torch)."}
    )
    model_type: str | None = field(
        default=None, metadata={"help": "For from-scratch runs: a transformers model type (gpt2, llama, qwen2, ...)."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config to start from (Hub id or local folder), if not the model's."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Comma-separated config overrides, e.g. 'n_layer=4,n_head=4,n_embd=128'."}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer (Hub id or folder); 'char' builds the character tokenizer from the data."},
    )
    torch_dtype: str | None = field(default=None, metadata={"help": "Load dtype: auto, float32, bfloat16 or float16."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})


@dataclass
class DataArguments:
    """Which text to train on and how to cut it into blocks and frequency groups."""

    dataset_name: str | None = field(
        default="tinyshakespeare", metadata={"help": "'tinyshakespeare' (built in) or a `datasets` name/path."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The `datasets` config name."})
    data_file: str | None = field(
        default=None,
        metadata={"help": "Local tinyshakespeare copy (else $HF_SELFISH_TINYSHAKESPEARE, the HF cache, a download)."},
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Local training file: .txt, .json/.jsonl, .parquet."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file (same formats)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    document_unit: str = field(
        default="auto",
        metadata={
            "help": "One document (followed by the tokenizer's EOS): 'file', 'row', 'paragraph', or 'auto' (a .txt "
            "file or the built-in text is one document; a json/parquet or `datasets` row is one)."
        },
    )
    block_size: int = field(default=64, metadata={"help": "Tokens per training/eval block."})
    validation_split_percentage: float = field(
        default=10.0, metadata={"help": "Percent of the train data held out when there is no validation split."}
    )
    eval_split: str = field(
        default="validation",
        metadata={
            "help": "'validation': evaluate on the validation split. 'tune': hold out the last tune_split_percentage "
            "of the TRAIN split's characters (whole rows) as the eval set and train on the rest (the validation split "
            "is not used; token frequencies come from the rest); for choosing hyperparameters."
        },
    )
    tune_split_percentage: float = field(
        default=10.0, metadata={"help": "eval_split=tune: percent of the train split's characters held out."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the train blocks (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the eval blocks (debugging)."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for `datasets.map`."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute cached `datasets.map` results."})
    bucket_size: int | None = field(
        default=None,
        metadata={"help": "Frequency-rank bucket width; None: 10 for vocabularies <= 1000, log-spaced above."},
    )
    bucket_scheme: str = field(default="auto", metadata={"help": "'linear', 'log' or 'auto' (by vocabulary size)."})
    bible_dir: str | None = field(
        default=None,
        metadata={"help": "dataset_name=bible: folder of <language>.jsonl files (else $HF_SELFISH_BIBLE_DIR)."},
    )
    bible_main: str = field(default="eng_web", metadata={"help": "dataset_name=bible: the main language."})
    bible_small: list[str] | None = field(
        default=None, metadata={"help": "dataset_name=bible: small languages, each bible_share of the training text."}
    )
    bible_eval_only: list[str] | None = field(
        default=None,
        metadata={"help": "dataset_name=bible: languages evaluated on the held-out verses but never trained on."},
    )
    bible_share: float = field(
        default=0.02, metadata={"help": "dataset_name=bible: each small language's share of training characters."}
    )
    bible_seed: int = field(default=0, metadata={"help": "dataset_name=bible: seed of the verses drawn."})
    bpe_vocab_size: int = field(
        default=4096,
        metadata={"help": "tokenizer_name=bpe: vocabulary of the byte-level BPE trained on the train split."},
    )
    low_resource_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of text units moved into a simulated second language (ids shifted by +V); 0 = off."},
    )
    low_resource_unit: str = field(
        default="paragraph", metadata={"help": "Text unit assigned to a language: 'paragraph' or 'line'."}
    )
    low_resource_seed: int = field(default=0, metadata={"help": "Seed of the language assignment."})
    train_language: str | None = field(
        default=None,
        metadata={"help": "With the simulation: train on this language only ('lang_small' or 'lang_main')."},
    )

    def __post_init__(self):
        """Refuse what would only fail (or silently train on nothing) after the data is prepared."""
        if not _positive_int(self.block_size):
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}.")
        if self.block_size < 2:
            raise ValueError(
                f"block_size={self.block_size} leaves no label after the causal shift (a block of one token predicts "
                "nothing); use a block_size of at least 2"
            )
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ValueError(f"{name} must be a positive number of blocks, got {value!r}.")
        if not 0 <= self.low_resource_fraction < 1:
            raise ValueError(f"low_resource_fraction must be in [0, 1), got {self.low_resource_fraction!r}.")
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(f"eval_split must be one of {EVAL_SPLITS}, got {self.eval_split!r}.")
        if isinstance(self.tune_split_percentage, bool) or not 0 < self.tune_split_percentage < 100:
            raise ValueError(f"tune_split_percentage must be in (0, 100), got {self.tune_split_percentage!r}.")
        if self.document_unit not in DOCUMENT_UNITS:
            raise ValueError(f"document_unit must be one of {DOCUMENT_UNITS}, got {self.document_unit!r}.")
        if self.low_resource_unit not in TEXT_UNITS:
            raise ValueError(f"low_resource_unit must be one of {TEXT_UNITS}, got {self.low_resource_unit!r}.")


@dataclass
class ExperimentArguments:
    """How `hf-selfish compare` repeats and stores the arms of a recipe."""

    seeds: int = field(default=1, metadata={"help": "Repeat every arm with seeds seed, seed+1, ..., seed+N-1."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace a finished comparison in output_dir instead of refusing."}
    )
    sweep_margins: list[str] | None = field(
        default=None,
        metadata={"help": "Margin sweep: arms = the CE baseline + one selfish arm per margin (numbers or 'auto')."},
    )
