"""The console: one compact line per log, built from the logged metrics (which all still reach the logs)."""

from __future__ import annotations

from transformers.trainer_callback import ProgressCallback

from hf_selfish.callbacks import CompactProgressCallback, compact_log_line


def test_eval_line_shows_loss_the_most_frequent_and_rarest_present_groups_and_languages():
    logs = {
        "eval_loss": 1.89714,
        "eval_rank_1-10_nll": 1.70123,
        "eval_rank_1-10_tokens": 900,
        "eval_rank_11-20_nll": 2.5,
        "eval_rank_21-25_tokens": 0,  # absent: no NLL, never shown
        "eval_lang_small_nll": 3.25,
        "eval_runtime": 1.0,
    }
    line = compact_log_line(logs, step=250, elapsed=12.4)
    assert (
        line
        == "step 250 eval: loss 1.8971 | ranks 1-10 NLL 1.701 | ranks 11-20 NLL 2.500 | lang_small NLL 3.250 | 12 s"
    )


def test_training_and_end_lines():
    assert compact_log_line({"loss": 2.1049, "selfish_masked_fraction": 0.714, "learning_rate": 7.3e-4}, 50) == (
        "step 50: loss 2.1049, masked 0.71, lr 7.30e-04"
    )
    assert compact_log_line({"train_runtime": 99.6}, 2000) == "training done after 2000 steps in 100 s"
    assert compact_log_line({"epoch": 1.0}, 3) is None


def test_the_compact_callback_replaces_the_raw_dict(capsys):
    callback = CompactProgressCallback()
    assert isinstance(callback, ProgressCallback)

    class Bar:
        lines: list[str] = []

        def write(self, text):
            self.lines.append(text)

    state = type("State", (), {"is_world_process_zero": True, "global_step": 7})()
    callback.training_bar = Bar()
    callback.on_log(None, state, None, logs={"loss": 1.5})
    assert callback.training_bar.lines == ["step 7: loss 1.5000"]
