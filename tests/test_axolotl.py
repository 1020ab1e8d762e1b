"""The Axolotl plugin end to end: `axolotl train` of a tiny local Llama on CPU with the selfish loss.

Needs its own venv (Axolotl pins transformers, trl, accelerate, peft): ``make test-axolotl``. Each step's
loss, as the patched forward returned it and as Axolotl logged it, equals a masked cross-entropy computed
here from the parameters before that step and the batch Axolotl fed (recorded by tests/axolotl_recorder.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("axolotl")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MARGIN = 0.05  # small: the random tiny model's logits lie close together, and some must be masked
CHARS = "abcdefghijklmnopqrstuvwxyz .,"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def _tiny_llama(root: Path) -> Path:
    """A random 2-layer Llama and a character tokenizer (with bos/eos/pad), saved to ``root/model``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from .tiny_models import tiny_config

    vocab = {token: i for i, token in enumerate(SPECIALS + list(CHARS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = tiny_config("llama", len(vocab), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    path = root / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _data(root: Path) -> Path:
    words = "the quick brown fox jumps over the lazy dog, and a rare zebra quietly vexes the jury.".split()
    path = root / "train.jsonl"
    rows = [" ".join(words[i % 7 : i % 7 + 6]) for i in range(24)]
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    return path


def _config(root: Path, model: Path, data: Path, name: str, **selfish) -> Path:
    settings = {
        "base_model": str(model),
        "tokenizer_type": "PreTrainedTokenizerFast",
        "plugins": ["hf_selfish.integrations.axolotl.SelfishPlugin", "tests.axolotl_recorder.RecorderPlugin"],
        "datasets": [{"path": str(data), "ds_type": "json", "type": "completion"}],
        "dataset_prepared_path": str(root / f"prepared_{name}"),
        "val_set_size": 0,
        "sequence_len": 32,
        "sample_packing": False,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_steps": 3,
        "learning_rate": 0.01,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "seed": 7,
        "output_dir": str(root / f"out_{name}"),
        **selfish,
    }
    path = root / f"{name}.yml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


def _axolotl_train(config: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)  # axolotl shells out to `accelerate launch`
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "WANDB_DISABLED": "true",
        "OMP_NUM_THREADS": "1",
        "AXOLOTL_DO_NOT_TRACK": "1",  # its telemetry thread retries an unreachable host at exit
    }
    command = [str(Path(bin_dir) / "axolotl"), "train", str(config)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _masked_ce(model, batch, margin: float | None, num_items) -> torch.Tensor:
    """Sum over labelled positions of ``logsumexp(z[kept]) - z[target]`` (kept: ``z >= z[target] - margin``),
    over ``num_items``: the selfish loss written out, in float64."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits  # [B, T, V]
    logits = logits[:, :-1].reshape(-1, logits.shape[-1])  # [N, V]
    labels = batch["labels"][:, 1:].reshape(-1)  # [N]
    total = torch.zeros((), dtype=torch.float64)
    for row, target in zip(logits, labels.tolist()):
        if target == -100:
            continue
        kept = row if margin is None else row[row >= row[target] - margin]
        total = total + torch.logsumexp(kept, 0) - row[target]
    return total / float(num_items)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("axolotl")
    return root, _tiny_llama(root), _data(root)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_axolotl_train_losses_equal_the_masked_ce_of_each_step(tiny, fused):
    from transformers import AutoModelForCausalLM

    root, model_path, data = tiny
    name = "fused" if fused else "unfused"
    run = _axolotl_train(_config(root, model_path, data, name, selfish_margin=MARGIN, selfish_fused=fused))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    recorded = torch.load(root / f"out_{name}" / "recorded.pt", weights_only=False)
    steps = recorded["steps"]
    assert len(steps) == 3 and all(len(step["forwards"]) == 2 for step in steps)  # 3 steps x 2 micro-batches

    reference = AutoModelForCausalLM.from_pretrained(model_path).double().train()
    for step in steps:
        reference.load_state_dict({k: v.double() for k, v in step["params"].items()}, strict=False)
        expected_step = 0.0
        for forward in step["forwards"]:
            batch, num_items = forward["batch"], forward["batch"]["num_items_in_batch"]
            with torch.no_grad():
                expected = _masked_ce(reference, batch, MARGIN, num_items)
                plain = _masked_ce(reference, batch, None, num_items)
            assert expected < plain - 1e-3  # the margin masks something: this test tells the two apart
            got = forward["loss"].double()
            assert torch.isclose(got, expected, rtol=1e-5, atol=1e-5 * abs(expected.item())), (step["step"], got)
            expected_step += expected.item()
        logged = [e for e in recorded["log_history"] if e.get("step") == step["step"] + 1 and "loss" in e]
        assert len(logged) == 1
        # the Trainer logs the sum of the step's micro-batch losses (each over the whole step's labelled tokens)
        assert math.isclose(logged[0]["loss"], expected_step, rel_tol=1e-5), (logged[0], expected_step)
        assert logged[0]["selfish_margin"] == MARGIN
        assert 0.0 < logged[0]["selfish_masked_fraction"] < 1.0
    assert not torch.equal(steps[0]["params"]["lm_head.weight"], steps[-1]["params"]["lm_head.weight"])


def test_a_bad_selfish_key_stops_axolotl_with_the_library_message(tiny):
    root, model_path, data = tiny
    run = _axolotl_train(_config(root, model_path, data, "bad", selfish_margin=-1))
    assert run.returncode != 0
    output = run.stdout + run.stderr
    # Axolotl shows any invalid key as a pydantic error under its own traceback: the key, then the library's line
    message = "selfish_margin\n  Value error, selfish margin must be a non-negative number or None, got -1.0"
    assert output.count(message) == 1, output[-3000:]
    assert not (root / "out_bad" / "recorded.pt").exists()


def test_rank_bucket_eval_logs_per_group_metrics_beside_a_plain_ce_eval_loss(tiny):
    root, model_path, data = tiny
    config = _config(
        root,
        model_path,
        data,
        "buckets",
        selfish_margin=MARGIN,
        selfish_rank_bucket_eval=True,
        val_set_size=0.25,
        eval_strategy="steps",
        eval_steps=3,
    )
    run = _axolotl_train(config)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    history = torch.load(root / "out_buckets" / "recorded.pt", weights_only=False)["log_history"]
    evals = [entry for entry in history if "eval_loss" in entry]
    assert evals, history
    last = evals[-1]
    groups = [key[len("eval_") : -len("_nll")] for key in last if key.startswith("eval_rank_") and key.endswith("_nll")]
    assert len(groups) >= 2, sorted(last)  # rank buckets of the train split's token counts
    assert sum(last[f"eval_{g}_tokens"] for g in groups) > 0
    assert all(math.isfinite(last[f"eval_{g}_nll"]) and last[f"eval_{g}_nll"] > 0 for g in groups)
