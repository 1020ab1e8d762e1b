"""`hf-selfish train` end to end for any AutoModelForCausalLM: tiny GPT-2, Llama and Qwen2 built from configs.

Each run trains a few steps on a small local corpus (.txt, JSON lines or parquet) with the character
tokenizer, in this process, through `hf_selfish.cli.main`. The saved model and tokenizer are reloaded
with the Auto classes and the logged eval loss is recomputed from the reloaded model with F.cross_entropy.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from hf_selfish.cli import main
from hf_selfish.lab.data import build_char_tokenizer
from hf_selfish.lab.recipe import load_recipe
from hf_selfish.lab.run import prepare_data

from .conftest import REPO_ROOT
from .tiny_models import tiny_model

BLOCK_SIZE = 32
TINY_CONFIGS = {
    "gpt2": "n_layer=2,n_head=2,n_embd=32,n_positions=32",
    "llama": "num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=2,hidden_size=32,"
    "intermediate_size=64,max_position_embeddings=32",
    "qwen2": "num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=2,hidden_size=32,"
    "intermediate_size=64,max_position_embeddings=32",
}
WORDS = "the of and to in is was he that it for on with as his at by had from they".split() + [
    "quixotic",
    "zephyr",
    "jukebox",
    "wyvern",
    "fjord",
    "kvetch",
    "syzygy",
    "mezquit",
]


def corpus_lines(n_lines: int = 160, seed: int = 0) -> list[str]:
    """Deterministic lines of Zipf-distributed words: frequent and rare characters, like real text."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(WORDS))]
    lines = []
    for _ in range(n_lines):
        words = rng.choices(WORDS, weights, k=rng.randint(4, 9))
        lines.append(" ".join(words).capitalize() + rng.choice(".,;!?") + "\n")
    return lines


def write_corpus(path: Path, n_lines: int = 160) -> Path:
    path.write_text("".join(corpus_lines(n_lines)), encoding="utf-8")
    return path


def run_args(train_file: Path, output_dir: Path, model_type: str = "gpt2", **extra: str) -> list[str]:
    """Command-line arguments of a few-step `hf-selfish train` run (no recipe file)."""
    values = {
        "train_file": str(train_file),
        "tokenizer_name": "char",
        "model_type": model_type,
        "config_overrides": TINY_CONFIGS[model_type],
        "block_size": str(BLOCK_SIZE),
        "max_steps": "2",
        "per_device_train_batch_size": "4",
        "per_device_eval_batch_size": "8",
        "eval_strategy": "steps",
        "eval_steps": "1",
        "max_eval_samples": "11",
        "logging_steps": "1",
        "learning_rate": "1e-2",
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": "true",
        "disable_tqdm": "true",
        "seed": "0",
        "output_dir": str(output_dir),
        **extra,
    }
    return [token for key, value in values.items() for token in (f"--{key}", value)]


def validation_blocks(argv: list[str]) -> torch.Tensor:
    """The eval blocks of a run, rebuilt from its arguments: `[N, BLOCK_SIZE]` ids."""
    args = load_recipe(None, _overrides(argv)).arguments()
    data = prepare_data(args.model, args.data)
    return torch.tensor(data.lm.datasets["validation"]["input_ids"])


def _overrides(argv: list[str]) -> dict[str, str]:
    """``["--key", "value", ...]`` -> ``{"key": "value", ...}``."""
    return {key[2:]: value for key, value in zip(argv[::2], argv[1::2])}


def reference_eval_loss(model, blocks: torch.Tensor) -> float:
    """Mean next-token cross-entropy over every position of ``blocks``, straight from the logits."""
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=blocks).logits  # [N, T, V]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), blocks[:, 1:].flatten()).item()


def last_eval(output_dir: Path) -> dict:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    evals = [entry for entry in history if "eval_loss" in entry]
    assert evals, "no evaluation in trainer_state.json"
    return evals[-1]


# transformers 5 forces the registered tokenizer class for these model types in AutoTokenizer (its
# MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS): a character tokenizer saved with a Qwen2 model reloads as a
# byte-level Qwen2Tokenizer that drops spaces. PreTrainedTokenizerFast reads the saved tokenizer.json as it is.
AUTO_TOKENIZER_REPLACES_SAVED_CLASS = {"qwen2"}


def reload_tokenizer(output_dir: Path, model_type: str):
    if model_type in AUTO_TOKENIZER_REPLACES_SAVED_CLASS:
        assert type(AutoTokenizer.from_pretrained(output_dir)).__name__ == "Qwen2Tokenizer"  # the quirk, still there
        return PreTrainedTokenizerFast.from_pretrained(output_dir)
    return AutoTokenizer.from_pretrained(output_dir)


def check_run(output_dir: Path, argv: list[str], model_type: str, text: str) -> None:
    """The saved model/tokenizer reload, agree with each other and reproduce the logged eval metrics."""
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = reload_tokenizer(output_dir, model_type)
    assert model.config.model_type == model_type
    assert model.config.vocab_size == len(tokenizer) == len(set(text))
    assert tokenizer.decode(tokenizer(text[:200])["input_ids"]) == text[:200]

    final = last_eval(output_dir)
    assert final["step"] == 2
    blocks = validation_blocks(argv)  # [11, 32]
    assert blocks.shape == (11, BLOCK_SIZE)
    assert final["eval_loss"] == pytest.approx(reference_eval_loss(model, blocks), abs=1e-4)
    token_counts = {k: v for k, v in final.items() if k.startswith("eval_rank_") and k.endswith("_tokens")}
    assert len(token_counts) >= 2
    assert sum(token_counts.values()) == blocks.shape[0] * (BLOCK_SIZE - 1)  # every eval position, once
    for key in ("eval_rank_1-10_nll", "eval_rank_1-10_accuracy", "eval_rank_1-10_mrr"):
        assert key in final


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "qwen2"])
def test_train_from_scratch_any_causal_lm(tmp_path, model_type):
    corpus = write_corpus(tmp_path / "corpus.txt")
    argv = run_args(corpus, tmp_path / "out", model_type)
    assert main(["train", *argv]) == 0
    out = tmp_path / "out"
    check_run(out, argv, model_type, corpus.read_text())
    config = json.loads((out / "config.json").read_text())
    if model_type == "llama":  # derived from the overrides, not the 7B defaults
        assert (config["head_dim"], config["num_key_value_heads"]) == (8, 2)
    if model_type == "qwen2":
        assert len(config["layer_types"]) == config["num_hidden_layers"] == 2
    record = json.loads((out / "run_result.json").read_text())
    assert record["selfish_margin"] == 2.0 and record["global_step"] == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_train_on_a_text_column_of_json_or_parquet(tmp_path, suffix):
    lines = corpus_lines()
    # the other column holds characters the text column never uses: they must not reach the vocabulary
    rows = {"body": lines, "meta": [f"#{i}@{i * 7}" for i in range(len(lines))]}
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"body": b, "meta": m}) + "\n" for b, m in zip(*rows.values())))
    else:
        Dataset.from_dict(rows).to_parquet(str(path))
    argv = run_args(path, tmp_path / "out", text_column="body", selfish_margin="null")
    assert main(["train", *argv]) == 0
    check_run(tmp_path / "out", argv, "gpt2", "".join(lines))
    assert "#" not in AutoTokenizer.from_pretrained(tmp_path / "out").get_vocab()


def test_unknown_config_override_is_a_one_line_error(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_lines=40)
    argv = run_args(corpus, tmp_path / "out", "llama", config_overrides="num_hidden_layers=2,n_layer=3")
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hf-selfish train: error: config_overrides") and "LlamaConfig has no field 'n_layer'" in err
    assert not (tmp_path / "out").exists()


def test_finetune_recipe_on_a_local_pretrained_model(tmp_path):
    """recipes/finetune_causal_lm.yaml as written, with a local tiny "pretrained" GPT-2 in place of gpt2."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    pretrained = tmp_path / "pretrained"
    tokenizer = build_char_tokenizer(corpus.read_text())
    tiny_model("gpt2", len(tokenizer), seed=3, n_positions=BLOCK_SIZE).save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    out = tmp_path / "out"
    argv = [
        "--arm",
        "selfish",
        "--model_name_or_path",
        str(pretrained),
        "--train_file",
        str(corpus),
        "--output_dir",
        str(out),
        "--block_size",
        str(BLOCK_SIZE),
        "--max_steps",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--eval_steps",
        "1",
        "--logging_steps",
        "1",
        "--max_eval_samples",
        "8",
        "--save_strategy",
        "no",
        "--use_cpu",
        "true",
        "--disable_tqdm",
        "true",
    ]
    assert main(["train", str(REPO_ROOT / "recipes" / "finetune_causal_lm.yaml"), *argv]) == 0

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    start = next(e for e in history if "eval_loss" in e)
    assert start["step"] == 0  # eval_on_start: the pretrained weights, before any update
    args = load_recipe(REPO_ROOT / "recipes" / "finetune_causal_lm.yaml", _overrides(argv[2:])).arguments()
    blocks = torch.tensor(prepare_data(args.model, args.data).lm.datasets["validation"]["input_ids"])  # [8, 32]
    assert start["eval_loss"] == pytest.approx(
        reference_eval_loss(AutoModelForCausalLM.from_pretrained(pretrained), blocks), abs=1e-4
    )
    record = json.loads((out / "run_result.json").read_text())
    assert record["arm"] == "selfish" and record["selfish_margin"] == 2.0 and record["global_step"] == 2
    assert any("selfish_masked_fraction" in e for e in history)
