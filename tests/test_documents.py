"""Issue 13's data path: text is tokenized without special tokens, documents end with EOS, blocks start with BOS.

The reference is a plain evaluation loop that builds the blocks by hand from the held-out text (one BOS
per block, no BOS inside) and averages the model's cross-entropy; `hf-selfish train`'s evaluation before
training must give the same number. Before the fix every line got its own BOS, mid-block.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hf_selfish.cli import main
from hf_selfish.lab.arguments import DataArguments, ModelArguments
from hf_selfish.lab.data import prepare_lm_data
from hf_selfish.lab.data.blocks import group_texts, leading_bos_id

from .test_any_causal_lm import TINY_CONFIGS, WORDS, corpus_lines

BLOCK = 16


def bos_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer that puts <bos> before its input, like Llama's and Gemma's."""
    words = sorted({w.capitalize() for w in WORDS} | set(WORDS) | {".", ",", ";", "!", "?"})
    vocab = {"<bos>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    return folder


def test_group_texts_puts_one_bos_first_and_never_labels_it():
    out = group_texts({"input_ids": [[5, 6, 7], [8, 9, 1], [10, 11]]}, block_size=4, bos_id=0)
    assert out["input_ids"] == [[0, 5, 6, 7], [0, 8, 9, 1]]  # 8 tokens = 2 blocks of 3 (+ BOS); 10, 11 dropped
    assert out["labels"] == [[-100, 5, 6, 7], [-100, 8, 9, 1]]


def test_documents_end_with_eos_and_blocks_start_with_the_only_bos(tmp_path):
    tokenizer_dir = bos_tokenizer(tmp_path / "tok")
    lines = corpus_lines(60)
    rows = tmp_path / "docs.jsonl"
    rows.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines), encoding="utf-8")
    lm = prepare_lm_data(
        ModelArguments(tokenizer_name=str(tokenizer_dir)), DataArguments(train_file=str(rows), block_size=BLOCK)
    )
    assert leading_bos_id(lm.tokenizer) == 0
    blocks = lm.datasets["train"]["input_ids"]
    assert all(block[0] == 0 and 0 not in block[1:] for block in blocks)
    eos = sum(block.count(1) for block in blocks)
    assert eos >= len(blocks) * (BLOCK - 1) // 10  # one EOS per row (document) of about 7 words
    assert all(label[0] == -100 for label in lm.datasets["train"]["labels"])


def test_txt_file_is_one_document_without_special_tokens_inside(tmp_path):
    tokenizer_dir = bos_tokenizer(tmp_path / "tok")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(corpus_lines(60)), encoding="utf-8")
    lm = prepare_lm_data(
        ModelArguments(tokenizer_name=str(tokenizer_dir)), DataArguments(train_file=str(corpus), block_size=BLOCK)
    )
    for block in lm.datasets["train"]["input_ids"]:
        assert block[0] == 0 and 0 not in block[1:] and 1 not in block  # no EOS between the lines of one file


@pytest.mark.slow
def test_the_first_evaluation_equals_a_plain_loop_over_the_same_blocks(tmp_path):
    tokenizer_dir = bos_tokenizer(tmp_path / "tok")
    lines = corpus_lines(120)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "run"
    argv = [
        "train",
        "--train_file",
        str(corpus),
        "--tokenizer_name",
        str(tokenizer_dir),
        "--model_type",
        "llama",
        "--config_overrides",
        TINY_CONFIGS["llama"],
        "--block_size",
        str(BLOCK),
        "--max_steps",
        "1",
        "--learning_rate",
        "0",
        "--eval_on_start",
        "true",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "1",
        "--save_strategy",
        "no",
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--use_cpu",
        "true",
    ]
    assert main(argv) == 0
    first_eval = json.loads((out / "run_result.json").read_text())["history"][0]
    assert first_eval["step"] == 0

    # the plain loop: the validation text (last 10% of the lines), tokenized once, cut by hand
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    n_train = int(len(lines) * 0.9)
    ids = tokenizer("".join(lines[n_train:]), add_special_tokens=False)["input_ids"]
    chunks = [ids[i : i + BLOCK - 1] for i in range(0, len(ids) - BLOCK + 2, BLOCK - 1)]
    chunks = [c for c in chunks if len(c) == BLOCK - 1]
    model = AutoModelForCausalLM.from_pretrained(out).eval()  # learning rate 0: the weights before training
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            input_ids = torch.tensor([[tokenizer.bos_token_id, *chunk]])
            logits = model(input_ids).logits[0, :-1]  # [T-1, V]
            total += F.cross_entropy(logits.float(), input_ids[0, 1:], reduction="sum").item()
            count += len(chunk)
    assert first_eval["eval_loss"] == pytest.approx(total / count, rel=1e-5)
