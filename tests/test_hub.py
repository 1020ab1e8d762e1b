"""Hub publishing without the Hub: the model card, the preflight check and failed pushes.

Nothing here contacts the real Hub: the suite runs with HF_HUB_OFFLINE=1, "unreachable" tests point the
endpoint at http://127.0.0.1:9 (nothing listens there), and the Trainer's own push goes to a fake client.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import constants
from huggingface_hub.utils import httpx

from hf_selfish import SelfishTrainer, SelfishTrainingArguments, hub
from hf_selfish.callbacks import RankBucketEvalCallback
from hf_selfish.cli import main
from hf_selfish.lab.recipe import load_recipe
from hf_selfish.lab.run import prepare_data, train_run
from hf_selfish.metric_names import MEAN_STATS, STAT_TITLES, group_label
from hf_selfish.model_card import write_run_card

from .test_any_causal_lm import run_args, write_corpus
from .test_trainer import padded_dataset
from .tiny_models import tiny_model

VOCAB = 67
GROUPS = {"rank_1-10": list(range(10)), "rank_11-60": list(range(10, 60)), "rank_61-67": list(range(60, 67))}
UNREACHABLE = "http://127.0.0.1:9"


# ------------------------------------------------------------------------------------------------ helpers


class FakeHubApi:
    """Records the Hub calls of `Trainer.push_to_hub`; ``fail_upload`` makes the upload raise like a dead network."""

    def __init__(self, fail_upload: bool = False):
        self.fail_upload = fail_upload
        self.created: list[str] = []
        self.uploads: list[dict] = []

    def whoami(self, token=None):
        return {"name": "tester"}

    def create_repo(self, repo_id, **kwargs):
        self.created.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, run_as_future=False, **kwargs):
        if self.fail_upload:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        folder = Path(folder_path)
        files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.uploads.append({"repo_id": repo_id, "folder": folder, "files": files, **kwargs})
        commit = SimpleNamespace(commit_url=f"{UNREACHABLE}/{repo_id}/commit/{len(self.uploads)}")
        if not run_as_future:
            return commit
        future = Future()  # the Trainer's checkpoint pushes run in the background
        future.set_result(commit)
        return future


@pytest.fixture
def fake_hub(monkeypatch):
    """Route transformers' and hf_selfish's Hub clients to one `FakeHubApi`."""
    api = FakeHubApi()
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: api)
    monkeypatch.setattr(hub, "_hub_api", lambda: api)
    return api


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Offline mode off, a token, and the Hub endpoint at a port where nothing listens."""
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "get_token", lambda: "hf_not_a_real_token")
    assert hub._hub_api().endpoint == UNREACHABLE  # never the real Hub
    return UNREACHABLE


def trained(tmp_path, margin, *, push_to_hub=False, hub_model_id=None) -> SelfishTrainer:
    """A tiny GPT-2 trained 2 steps with rank-bucket evaluation at every step."""
    callback = RankBucketEvalCallback(GROUPS, VOCAB)
    args = SelfishTrainingArguments(
        output_dir=str(tmp_path / "run"),
        selfish_margin=margin,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        batch_eval_metrics=True,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        push_to_hub=push_to_hub,
        hub_model_id=hub_model_id,
    )
    trainer = SelfishTrainer(
        model=tiny_model("gpt2", VOCAB),
        args=args,
        train_dataset=padded_dataset(8),
        eval_dataset=padded_dataset(6, seed=1),
        **callback.trainer_kwargs(),
    )
    trainer.train()
    return trainer


def card_parts(text: str) -> tuple[dict, str]:
    """(metadata, body) of a model card."""
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def card_table(body: str) -> dict[str, dict[str, str]]:
    """The per-group table of a card: {group: {header: cell}}."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in body.splitlines()
        if line.startswith("| ")
    ]
    (headers, rule), data = rows[:2], rows[2:]
    assert set("".join(rule)) <= set("-:")
    return {cells[0]: dict(zip(headers[1:], cells[1:])) for cells in data}


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def comparison_dir(tmp_path: Path) -> Path:
    """A comparison's run directory as `report` leaves it (report.md, results.json, plots/)."""
    run_dir = tmp_path / "cmp"
    (run_dir / "plots").mkdir(parents=True)
    (run_dir / "report.md").write_text("# tiny comparison\n\n| arm | eval_loss |\n|---|---|\n| selfish | 3.1 |\n")
    (run_dir / "results.json").write_text(json.dumps({"format": 1, "arms": [{"name": "selfish"}], "runs": []}))
    (run_dir / "token_frequency.json").write_text("{}")
    (run_dir / "plots" / "rank_nll.png").write_bytes(b"\x89PNG fake")
    (run_dir / "baseline-seed0").mkdir()
    (run_dir / "baseline-seed0" / "model.safetensors").write_bytes(b"weights: not part of the report")
    return run_dir


# --------------------------------------------------------------------------------------------- model card


@pytest.mark.parametrize(
    "margin, loss_text", [(2.0, "**selfish cross-entropy** with margin m = 2"), (None, "**plain cross-entropy**")]
)
def test_model_card_states_the_loss_and_the_logged_bucket_metrics(tmp_path, margin, loss_text):
    trainer = trained(tmp_path, margin)
    trainer.create_model_card(model_name="tiny-run")
    metadata, body = card_parts((tmp_path / "run" / "README.md").read_text())

    assert metadata["library_name"] == "transformers"
    assert {"generated_from_trainer", "hf_selfish", "selfish-loss"} <= set(metadata["tags"])  # Trainer's tag kept
    assert f"Training loss: {loss_text}" in body
    assert ("selfish cross-entropy" in body) == (margin is not None)
    assert "- steps: `2`" in body and "epochs" not in body

    last = [e for e in trainer.state.log_history if "eval_loss" in e][-1]
    assert last["step"] == 2
    assert f"Overall eval loss: {last['eval_loss']:.4f}" in body
    table = card_table(body)
    assert list(table) == [group_label(group) for group in GROUPS]
    for group in GROUPS:
        row, tokens = table[group_label(group)], last[f"eval_{group}_tokens"]
        assert tokens > 0
        assert row["eval tokens (types)"] == f"{tokens:,} ({last[f'eval_{group}_types']})"
        for stat in MEAN_STATS:
            assert float(row[STAT_TITLES[stat]]) == pytest.approx(last[f"eval_{group}_{stat}"], abs=5e-5)
    assert sum(last[f"eval_{group}_tokens"] for group in GROUPS) == sum(
        int(row["eval tokens (types)"].split()[0].replace(",", "")) for row in table.values()
    )


def test_run_card_keeps_the_trainers_metadata_and_needs_an_evaluation(tmp_path):
    (tmp_path / "README.md").write_text(
        "---\nlibrary_name: transformers\nlicense: mit\nbase_model: gpt2\n"
        "tags:\n- generated_from_trainer\n---\n\n# auto-generated\n"
    )
    history = [
        {"loss": 3.5, "step": 1},
        {
            "eval_loss": 3.25,
            "eval_a_nll": 3.0,
            "eval_a_nll_weighted": 3.5,
            "eval_a_tokens": 4,
            "eval_a_types": 2,
            "eval_a_accuracy": 0.25,
            "eval_a_recall_at_5": 0.5,
            "eval_a_mrr": 0.375,
            "eval_b_tokens": 0,
            "step": 1,
        },
    ]
    args = {"selfish_margin": "auto", "selfish_margin_value": 8.78, "max_steps": 1}
    write_run_card(tmp_path, history, args, model_id="tester/m")
    metadata, body = card_parts((tmp_path / "README.md").read_text())
    assert (metadata["license"], metadata["base_model"]) == ("mit", "gpt2")
    assert "generated_from_trainer" in metadata["tags"] and "# auto-generated" not in body
    assert "# tester/m" in body and "fine-tuned from `gpt2`" in body
    assert "margin m = auto = 8.78 (ln V - ln(1 - top_p))" in body
    table = card_table(body)
    assert table["a"]["eval tokens (types)"] == "4 (2)" and table["a"][STAT_TITLES["mrr"]] == "0.3750"
    assert table["b"]["eval tokens (types)"].startswith("0")
    with pytest.raises(ValueError, match="no eval_loss; run trainer.evaluate"):
        write_run_card(tmp_path, history[:1], args)


def test_trainer_push_to_hub_uploads_our_card(tmp_path, fake_hub):
    trainer = trained(tmp_path, 2.0, push_to_hub=True, hub_model_id="tester/tiny-selfish")
    assert fake_hub.created == ["tester/tiny-selfish"]  # the Trainer's own init_hf_repo
    trainer.push_to_hub()
    (upload,) = fake_hub.uploads
    assert upload["repo_id"] == "tester/tiny-selfish" and upload["folder"] == tmp_path / "run"
    assert "model.safetensors" in upload["files"]
    card = upload["files"]["README.md"].decode()
    assert "# tester/tiny-selfish" in card and "**selfish cross-entropy** with margin m = 2" in card
    assert f"| {group_label('rank_1-10')} |" in card


# ------------------------------------------------------------------------------------------ preflight


def test_check_can_push_offline_no_token_unreachable(monkeypatch, unreachable_hub):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="offline mode is on .*HF_HUB_OFFLINE"):
        hub.check_can_push()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="no Hugging Face token; run `hf auth login` or set HF_TOKEN"):
        hub.check_can_push()
    with pytest.raises(ValueError, match=r"the Hub at http://127\.0\.0\.1:9 did not accept .*ConnectError"):
        hub.check_can_push("hf_not_a_real_token")


def test_train_with_push_to_hub_offline_fails_before_training(tmp_path, capsys):
    assert constants.is_offline_mode()  # the suite's setting
    corpus = write_corpus(tmp_path / "corpus.txt", n_lines=40)
    argv = run_args(corpus, tmp_path / "out", push_to_hub="true", hub_model_id="tester/x")
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-selfish train: error: cannot push to the Hub: ")
    assert "HF_HUB_OFFLINE" in err[0]
    assert not (tmp_path / "out").exists()  # nothing trained


def test_failed_final_push_keeps_every_file(tmp_path, monkeypatch):
    api = FakeHubApi(fail_upload=True)
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: api)
    corpus = write_corpus(tmp_path / "corpus.txt", n_lines=60)
    argv = run_args(corpus, tmp_path / "out", push_to_hub="true", hub_model_id="tester/x", max_steps="1")
    args = load_recipe(None, {k[2:]: v for k, v in zip(argv[::2], argv[1::2])}).arguments()
    data = prepare_data(args.model, args.data)
    with pytest.raises(ValueError, match=r"every file is kept in .*out .*tester/x failed \(ConnectError.*hf upload"):
        train_run(args, data)
    out = tmp_path / "out"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "trainer_state.json",
        "token_frequency.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert "**selfish cross-entropy** with margin m = 2" in (out / "README.md").read_text()
    assert not (out / "run_result.json").exists()  # not finished: the same command runs (and pushes) again


def test_train_with_push_to_hub_uploads_the_finished_run(tmp_path, unreachable_hub, fake_hub):
    corpus = write_corpus(tmp_path / "corpus.txt", n_lines=60)
    argv = run_args(
        corpus,
        tmp_path / "out",
        push_to_hub="true",
        hub_model_id="tester/x",
        max_steps="1",
        save_strategy="steps",
        save_steps="1",
    )
    assert main(["train", *argv]) == 0
    assert fake_hub.created == ["tester/x"]
    final = fake_hub.uploads[-1]  # after the checkpoint pushes of hub_strategy=every_save
    assert final["commit_message"] == "Model save" and final["folder"] == tmp_path / "out"
    assert final["ignore_patterns"] == ["_*", "checkpoint-*"]
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "trainer_state.json",
        "token_frequency.json",
        "rank_buckets.json",
        "README.md",
    ):
        assert name in final["files"], name
    assert "**selfish cross-entropy** with margin m = 2" in final["files"]["README.md"].decode()
    assert "# tester/x" in final["files"]["README.md"].decode()
    assert (tmp_path / "out" / "run_result.json").is_file()


# ------------------------------------------------------------------------------------------- push_report


def test_push_report_uploads_report_as_card_results_and_plots(tmp_path, unreachable_hub, fake_hub):
    run_dir = comparison_dir(tmp_path)
    before = snapshot(run_dir)
    url = hub.push_report(run_dir, "tester/tiny-report")
    assert url.endswith("tester/tiny-report/commit/1")
    assert fake_hub.created == ["tester/tiny-report"]
    (upload,) = fake_hub.uploads
    assert sorted(upload["files"]) == ["README.md", "plots/rank_nll.png", "results.json", "token_frequency.json"]
    metadata, body = card_parts(upload["files"]["README.md"].decode())
    assert "hf_selfish" in metadata["tags"]
    assert body.strip() == (run_dir / "report.md").read_text().strip()
    assert upload["files"]["plots/rank_nll.png"] == b"\x89PNG fake"
    assert snapshot(run_dir) == before


def test_push_report_offline_or_unreachable_keeps_every_file(tmp_path, monkeypatch, unreachable_hub):
    run_dir = comparison_dir(tmp_path)
    before = snapshot(run_dir)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="offline mode is on"):
        hub.push_report(run_dir, "tester/tiny-report")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ValueError, match=r"the Hub at http://127\.0\.0\.1:9 did not accept"):
        hub.push_report(run_dir, "tester/tiny-report")
    assert snapshot(run_dir) == before


def test_push_report_upload_failure_keeps_every_file(tmp_path, monkeypatch, unreachable_hub):
    api = FakeHubApi(fail_upload=True)
    monkeypatch.setattr(hub, "_hub_api", lambda: api)
    run_dir = comparison_dir(tmp_path)
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match="failed .*ConnectError.*every local file is kept"):
        hub.push_report(run_dir, "tester/tiny-report")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("repo_id, message", [("a/b/c", "is not USER/NAME"), ("", "is not USER/NAME")])
def test_push_report_bad_input(tmp_path, repo_id, message):
    run_dir = comparison_dir(tmp_path)
    with pytest.raises(ValueError, match=message):
        hub.push_report(run_dir, repo_id)
    (run_dir / "report.md").unlink()
    with pytest.raises(ValueError, match="report.md does not exist; write it with `hf-selfish report"):
        hub.push_report(run_dir, "tester/x")


def test_compare_refuses_one_hub_repository_for_several_runs(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_lines=40)
    argv = run_args(corpus, tmp_path / "cmp", push_to_hub="true", hub_model_id="tester/x")
    assert main(["compare", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "hub_model_id='tester/x' names one Hub repository for 2 runs" in err
    assert not (tmp_path / "cmp").exists()


def test_report_push_from_the_command_line_offline_is_one_line(tmp_path, monkeypatch, capsys):
    run_dir = comparison_dir(tmp_path)
    monkeypatch.setattr(
        "hf_selfish.reporting.report.write_report", lambda path, baseline=None: Path(path) / "report.md"
    )
    before = snapshot(run_dir)
    assert main(["report", str(run_dir), "--push", "tester/tiny-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hf-selfish report: error: cannot push {run_dir} to tester/tiny-report")
    assert "HF_HUB_OFFLINE" in err[0]
    assert snapshot(run_dir) == before
