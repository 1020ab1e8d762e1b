"""GradientScenarioCallback in real (tiny) Trainer runs: values, files, logs, resume."""

from __future__ import annotations

import copy
import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from hf_selfish.callbacks import GradientScenarioCallback
from hf_selfish.metric_names import SCENARIOS_FILE
from hf_selfish.scenarios import compute_scenario_norms, load_scenario_norms
from hf_selfish.trainer import SelfishTrainer, SelfishTrainingArguments

from .tolerances import close_scaled
from .torchrun import run_two_processes

VOCAB = 40
GROUPS = {"rank_1-20": list(range(20)), "rank_21-40": list(range(20, 40))}


def tiny_gpt2(initializer_range: float = 0.02) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=initializer_range,
    )
    return GPT2LMHeadModel(config)


def dataset(rows: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (rows, 16), generator=generator)
    labels = ids.clone()
    # label 0 is never predicted; ignoring it makes the Trainer's num_items_in_batch the count of real
    # targets even where transformers counts unshifted labels (GPT2LMHeadModel has loss_type None in 5.x)
    labels[:, 0] = -100
    return [{"input_ids": row, "labels": label} for row, label in zip(ids, labels)]


def training_args(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_steps=6,
        save_strategy="steps",
        save_steps=3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return TrainingArguments(**values)


class StopAt(TrainerCallback):
    """Ends training after `step` optimizer steps, as an interruption would (after the checkpoint there)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("accumulation", [1, 2])
def test_first_step_equals_standalone_computation(tmp_path, accumulation):
    """Step 0 sees all the data (in one batch, or two accumulated micro-batches): norms of its whole gradient."""
    model = tiny_gpt2()
    initial = copy.deepcopy(model).eval()
    data = dataset(4 * accumulation)
    callback = GradientScenarioCallback(every_k_steps=1)
    args = training_args(tmp_path, max_steps=1, gradient_accumulation_steps=accumulation)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()

    ids = torch.stack([row["input_ids"] for row in data])
    labels = torch.stack([row["labels"] for row in data])
    expected = compute_scenario_norms(initial, ids, labels, margin=None)
    assert callback.recorded_steps == 1
    assert close_scaled(callback.norms.stacked(), expected.stacked())


def test_selfish_trainer_step_equals_standalone_selfish_computation(tmp_path):
    """SelfishTrainer keeps labels away from the model; the recorded split is still the selfish loss's."""
    model = tiny_gpt2(initializer_range=0.5)  # spread logits so that margin 2 masks some
    initial = copy.deepcopy(model).eval()
    data = dataset(4)
    callback = GradientScenarioCallback(every_k_steps=1)
    args = SelfishTrainingArguments(**training_args(tmp_path, max_steps=1).to_dict() | {"selfish_margin": 2.0})
    SelfishTrainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()

    ids = torch.stack([row["input_ids"] for row in data])
    labels = torch.stack([row["labels"] for row in data])
    expected = compute_scenario_norms(initial, ids, labels, margin=2.0)
    ce = compute_scenario_norms(initial, ids, labels, margin=None)
    assert close_scaled(callback.norms.stacked(), expected.stacked())
    assert not torch.allclose(expected.non_target, ce.non_target, rtol=1e-3)  # margin 2 matters here


def test_every_k_steps_files_and_logs(tmp_path):
    callback = GradientScenarioCallback(every_k_steps=2, groups=GROUPS)
    trainer = Trainer(model=tiny_gpt2(), args=training_args(tmp_path), train_dataset=dataset(8), callbacks=[callback])
    trainer.train()

    assert callback.recorded_steps == 3  # steps 0, 2, 4 of 6
    final, metadata = load_scenario_norms(tmp_path / SCENARIOS_FILE)
    assert torch.equal(final.stacked(), callback.norms.stacked())
    assert metadata["recorded_steps"] == "3" and metadata["global_step"] == "6"
    at_3, metadata_3 = load_scenario_norms(tmp_path / "checkpoint-3" / SCENARIOS_FILE)
    assert metadata_3["recorded_steps"] == "2"
    assert torch.all(at_3.non_target < final.non_target)  # sums only grow

    keys = [f"scenario_{group}_non_target_share" for group in GROUPS]
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    logged_steps = [log["step"] for log in train_logs if all(key in log for key in keys)]
    assert logged_steps == [1, 3, 5]  # the logs right after each recorded step
    for log in train_logs:
        for key in keys:
            assert key not in log or 0.0 < log[key] < 1.0
    with open(tmp_path / "checkpoint-6" / "trainer_state.json") as handle:
        saved_history = json.load(handle)["log_history"]
    assert [log["step"] for log in saved_history if keys[0] in log] == [1, 3, 5]


def test_pop_log_metrics_feeds_a_trainer_log_override(tmp_path):
    """The route a trainer can take so that every report_to integration sees the shares."""

    class LoggingTrainer(Trainer):
        def log(self, logs, start_time=None):
            if "loss" in logs:
                for callback in self.callback_handler.callbacks:
                    if isinstance(callback, GradientScenarioCallback):
                        logs.update(callback.pop_log_metrics())
            super().log(logs, start_time)

    callback = GradientScenarioCallback(every_k_steps=1, groups=GROUPS)
    trainer = LoggingTrainer(
        model=tiny_gpt2(), args=training_args(tmp_path, max_steps=2), train_dataset=dataset(8), callbacks=[callback]
    )
    trainer.train()
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert all("scenario_rank_21-40_non_target_share" in log for log in train_logs)


@pytest.fixture(scope="module")
def uninterrupted_norms(tmp_path_factory):
    """Scenario norms of a 6-step run without interruption."""
    output_dir = tmp_path_factory.mktemp("straight")
    callback = GradientScenarioCallback(every_k_steps=1)
    Trainer(model=tiny_gpt2(), args=training_args(output_dir), train_dataset=dataset(8), callbacks=[callback]).train()
    norms, _ = load_scenario_norms(output_dir / SCENARIOS_FILE)
    return norms


@pytest.mark.parametrize("restore_flag", [False, True])
def test_resume_keeps_the_sums(tmp_path, restore_flag, uninterrupted_norms):
    data = dataset(8)
    interrupted_dir = tmp_path / "interrupted"
    args = training_args(interrupted_dir, restore_callback_states_from_checkpoint=restore_flag)
    first = GradientScenarioCallback(every_k_steps=1)
    Trainer(model=tiny_gpt2(), args=args, train_dataset=data, callbacks=[first, StopAt(3)]).train()
    assert first.recorded_steps == 3 and os.path.isdir(interrupted_dir / "checkpoint-3")

    resumed = GradientScenarioCallback(every_k_steps=1)
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=data, callbacks=[resumed])
    trainer.train(resume_from_checkpoint=True)

    got, metadata = load_scenario_norms(interrupted_dir / SCENARIOS_FILE)
    assert metadata["recorded_steps"] == "6"
    assert torch.allclose(got.stacked(), uninterrupted_norms.stacked(), rtol=1e-6, atol=0)


def test_label_smoothing_is_refused(tmp_path):
    args = training_args(tmp_path, max_steps=1, label_smoothing_factor=0.1)
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=dataset(4), callbacks=[GradientScenarioCallback()])
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        trainer.train()


@pytest.mark.parametrize("every_k_steps", [0, -1, 1.5, True])
def test_bad_every_k_steps(every_k_steps):
    with pytest.raises(ValueError, match="every_k_steps"):
        GradientScenarioCallback(every_k_steps=every_k_steps)


# Two processes (gloo on CPU, launched with torch.distributed.run): each rank records one DDP step on its half
# of the batch; the callback's reduction must give the vectors of the gradient DDP applied.

_DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import torch
    import torch.distributed as dist
    from tests.test_scenario_callback import dataset, tiny_gpt2
    from hf_selfish.scenario_recorder import _mean_across_processes
    from hf_selfish.scenario_recorder import GradientScenarioRecorder
    from tests.torchrun import exit_now

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_gpt2()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    rows = dataset(4)[2 * rank : 2 * rank + 2]
    ids = torch.stack([row["input_ids"] for row in rows])
    labels = torch.stack([row["labels"] for row in rows])
    with GradientScenarioRecorder(model) as recorder:
        ddp(input_ids=ids, labels=labels).loss.backward()
    reduced = _mean_across_processes(recorder.pop_vectors().stacked())
    if rank == 0:
        torch.save({"reduced": reduced, "grad": model.transformer.wte.weight.grad}, sys.argv[2])
    dist.barrier()
    dist.destroy_process_group()
    exit_now()  # no interpreter teardown: gloo's can abort or deadlock (tests/torchrun.py)
    """
)


@pytest.mark.slow
def test_two_process_vectors_average_like_ddp_gradients(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(_DDP_SCRIPT)
    out_file = tmp_path / "out.pt"
    run_two_processes(script, str(Path(__file__).parent), str(out_file))

    result = torch.load(out_file)
    # the averaged vectors sum to the gradient DDP applied ...
    assert close_scaled(result["reduced"].sum(0), result["grad"])
    # ... which is the gradient of the whole batch in one process (equal token counts on both ranks)
    data = dataset(4)
    ids = torch.stack([row["input_ids"] for row in data])
    labels = torch.stack([row["labels"] for row in data])
    expected = compute_scenario_norms(tiny_gpt2(), ids, labels, margin=None)
    assert close_scaled(result["reduced"].double().norm(dim=-1), expected.stacked())
