"""The parallel Bible corpus: language mixing by share, held-out books, bad input, BPE, language-only groups."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from hf_selfish.lab.arguments import DataArguments, ModelArguments
from hf_selfish.lab.data import prepare_lm_data
from hf_selfish.lab.data.bible import CODE_COLUMN, TEST_BOOKS, VALIDATION_BOOKS, bible_datasets, read_bible
from hf_selfish.lab.data.bpe import build_bpe_tokenizer
from hf_selfish.metric_names import describe_group

from .conftest import REPO_ROOT

BIBLE_DIR = REPO_ROOT.parent / "shared" / "data" / "bible"
needs_corpus = pytest.mark.skipif(not BIBLE_DIR.is_dir(), reason=f"no Bible corpus at {BIBLE_DIR}")


def args(**values) -> DataArguments:
    return DataArguments(dataset_name="bible", bible_dir=str(BIBLE_DIR), **values)


@needs_corpus
def test_small_languages_hold_their_share_and_validation_is_the_same_verses():
    raw = bible_datasets(args(bible_small=["rus_synodal", "nya_chichewa"], bible_share=0.02, bible_seed=3))
    train, validation = raw["train"], raw["validation"]
    chars: dict[str, int] = {}
    for text, code in zip(train["text"], train[CODE_COLUMN]):
        chars[code] = chars.get(code, 0) + len(text)
    total = sum(chars.values())
    longest = max(len(v.text) + 1 for v in read_bible(BIBLE_DIR, "rus_synodal"))
    for code in ("rus_synodal", "nya_chichewa"):  # the share, up to one verse (plus the newlines)
        assert abs(chars[code] - 0.02 * total) <= longest + 0.001 * total
    english = [v for v in read_bible(BIBLE_DIR, "eng_web") if v.book in VALIDATION_BOOKS]
    russian = [v for v in read_bible(BIBLE_DIR, "rus_synodal") if v.book in VALIDATION_BOOKS]
    assert [(v.book, v.chapter, v.verse) for v in english] == [(v.book, v.chapter, v.verse) for v in russian]
    assert validation[CODE_COLUMN].count("eng_web") == len(english) == validation[CODE_COLUMN].count("rus_synodal")
    held_out = {v.text + "\n" for v in read_bible(BIBLE_DIR, "eng_web") if v.book in VALIDATION_BOOKS + TEST_BOOKS}
    assert not held_out & set(train["text"])
    other_seed = bible_datasets(args(bible_small=["rus_synodal"], bible_share=0.02, bible_seed=4))["train"]["text"]
    assert other_seed != train["text"]


@needs_corpus
@pytest.mark.parametrize(
    "values, message",
    [
        ({"bible_small": ["klingon"]}, "language 'klingon' is not in the Bible corpus; its languages are arb_svd"),
        ({"bible_small": ["rus_synodal"], "bible_share": 0.7}, "bible_share must be in (0, 0.5], got 0.7"),
        ({"bible_small": ["eng_web"]}, "bible_small lists the main language 'eng_web'"),
        ({"bible_main": "xx"}, "language 'xx' is not in the Bible corpus"),
    ],
)
def test_bad_languages_and_shares(values, message):
    with pytest.raises(ValueError) as info:
        bible_datasets(args(**values))
    assert message in str(info.value)


def test_malformed_lines_and_a_missing_folder_are_named(tmp_path):
    good = {"book": 1, "chapter": 1, "verse": 1, "text": "In the beginning"}
    (tmp_path / "eng_web.jsonl").write_text(json.dumps(good) + "\n" + '{"book": 1, "text": }\n')
    with pytest.raises(ValueError, match=r"eng_web.jsonl, line 2: not a verse"):
        read_bible(tmp_path, "eng_web")
    # nothing found offline: tests/test_bible_source.py
    with pytest.raises(ValueError, match="holds no <language>.jsonl files"):
        bible_datasets(DataArguments(dataset_name="bible", bible_dir=str(tmp_path / "missing")))


def test_byte_level_bpe_round_trips_and_reloads(tmp_path):
    texts = ["In the beginning God created the heavens and the earth.\n", "В начале сотворил Бог небо и землю.\n"] * 50
    tokenizer = build_bpe_tokenizer(texts, vocab_size=300)
    assert len(tokenizer) == 300 and tokenizer.eos_token == "<|endoftext|>"
    sample = "Бог created: ẞ ☃ ǆ\n"  # characters never seen in training still encode (bytes)
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == sample
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(sample, add_special_tokens=False)["input_ids"] == ids
    with pytest.raises(ValueError, match="bpe_vocab_size must be an integer of at least 258"):
        build_bpe_tokenizer(texts, vocab_size=100)


@needs_corpus
def test_characters_only_a_small_language_uses_get_their_own_group():
    data = prepare_lm_data(
        ModelArguments(tokenizer_name="char"),
        args(bible_small=["rus_synodal"], bible_share=0.02, block_size=64, max_train_samples=64),
    )
    vocab = data.tokenizer.get_vocab()
    russian_only = {data.tokenizer.convert_ids_to_tokens(i) for i in data.groups["lang_rus_synodal_only"]}
    assert {"Б", "ж", "я"} <= russian_only and not {"a", " ", "."} & russian_only
    assert "B" in {data.tokenizer.convert_ids_to_tokens(i) for i in data.groups["lang_eng_web_only"]}
    assert describe_group("lang_rus_synodal_only").kind == "language_only"
    assert len(vocab) == data.vocab_size


@needs_corpus
def test_the_tuning_split_holds_out_the_end_of_each_language():
    values = {"bible_small": ["nya_chichewa"], "bible_share": 0.02, "block_size": 64}
    tune = prepare_lm_data(ModelArguments(tokenizer_name="char"), args(eval_split="tune", **values))
    raw = bible_datasets(args(**values))["train"]
    for code in ("eng_web", "nya_chichewa"):
        texts = [t for t, c in zip(raw["text"], raw[CODE_COLUMN]) if c == code]
        ends = [sum(len(t) for t in texts[: i + 1]) for i in range(len(texts))]
        first_held = next(i for i, end in enumerate(ends) if end >= 0.9 * ends[-1]) + 1  # first row after the cut
        held = texts[first_held:]
        # the language's eval subset is its held-out verses in blocks of 64 characters, cut 1000 rows at a
        # time (`datasets.map`'s batch: run_clm.py's group_texts drops each batch's remainder)
        subset = tune.eval_subsets[code]
        batches = [held[i : i + 1000] for i in range(0, len(held), 1000)]
        assert len(subset) == sum(len("".join(batch)) // 64 for batch in batches)
        assert tune.tokenizer.decode(subset[0]["input_ids"]) == "".join(held)[:64]
    assert tune.eval_subsets.keys() == {"eng_web", "nya_chichewa"}


# ------------------------------------------------------------------------------ per-language evaluation


def test_every_evaluation_also_scores_each_subset_through_the_trainer(tmp_path):
    """SubsetEvalCallback: `eval_{name}_loss` equals a plain loop over that subset; run records merge it."""
    import torch
    import torch.nn.functional as F
    from datasets import Dataset
    from transformers import default_data_collator

    from hf_selfish import SelfishTrainer, SelfishTrainingArguments
    from hf_selfish.callbacks import RankBucketEvalCallback, SubsetEvalCallback
    from hf_selfish.lab.results import eval_history

    from .tiny_models import tiny_model

    vocab = 67
    gen = torch.Generator().manual_seed(0)

    def blocks(n):
        ids = torch.randint(0, vocab, (n, 16), generator=gen)
        return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})

    subsets = {"eng": blocks(5), "nya": blocks(3)}
    model = tiny_model("gpt2", vocab)
    buckets = RankBucketEvalCallback({"all": list(range(vocab))}, vocab, save_per_token=False)
    args = SelfishTrainingArguments(
        output_dir=str(tmp_path), report_to="none", per_device_eval_batch_size=2, batch_eval_metrics=True, use_cpu=True
    )
    trainer = SelfishTrainer(
        model=model, args=args, eval_dataset=blocks(4), data_collator=default_data_collator, **buckets.trainer_kwargs()
    )
    trainer.add_callback(SubsetEvalCallback(subsets).bind(trainer))
    trainer.evaluate()
    (entry,) = eval_history(trainer.state.log_history)
    model.eval()
    for name, subset in subsets.items():
        ids = torch.tensor(subset["input_ids"])
        with torch.no_grad():
            logits = model(ids).logits[:, :-1]
        expected = F.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1)).item()
        assert entry[f"eval_{name}_loss"] == pytest.approx(expected, rel=1e-5)
        assert entry[f"eval_{name}_all_tokens"] == len(subset) * 15
    assert "eval_loss" in entry and len(trainer.state.log_history) == 3  # the eval and one entry per subset


def test_bits_per_character_per_language_from_results():
    import math

    from hf_selfish.reporting.contrasts import language_contrast_table
    from hf_selfish.reporting.plots.languages import bits_per_char_bars
    from hf_selfish.reporting.report import language_tables
    from hf_selfish.reporting.subsets import subset_rows
    from hf_selfish.reporting.summary import summarize

    def run(arm, seed, loss):
        final = {
            "eval_loss": 1.0,
            "eval_nya_loss": loss,
            "eval_nya_all_tokens": 90,
            "eval_nya_all_nll": loss + 1,
            "eval_nya_all_accuracy": 0.5,
            "eval_nya_all_mrr": 0.6,
            "step": 4,
        }
        before = {"eval_loss": 1.0, "eval_nya_loss": (7 + seed) * math.log(2), "step": 0}  # the step-0 evaluation
        return {"arm": arm, "seed": seed, "status": "finished", "final": final, "history": [before, final]}

    results = {
        "arms": [{"name": "baseline"}, {"name": "selfish"}],
        "runs": [
            run("baseline", 1, 2 * math.log(2)),
            run("baseline", 2, 4 * math.log(2)),
            run("selfish", 1, math.log(2)),
            run("selfish", 2, 2 * math.log(2)),
        ],
        "eval_subsets": {"nya": {"chars_per_token": 0.5}},
    }
    (row,) = subset_rows(results)
    assert row.name == "nya" and row.tokens == 90
    assert row.arms["baseline"]["bits_per_char"].values == pytest.approx((4.0, 8.0))  # 2 bits/token / 0.5
    assert row.delta["selfish"]["bits_per_char"].values == pytest.approx((-2.0, -4.0))
    assert row.arms["selfish"]["nll"].values == pytest.approx((math.log(2) + 1, 2 * math.log(2) + 1))
    # (7 + seed) bits/token / 0.5, one value per seed (both arms of a seed start from the same model)
    assert row.before.values == pytest.approx((16.0, 18.0))
    table = language_tables([row], summarize(results)).splitlines()
    assert table[:2] == ["**Bits per character**", ""]
    assert table[2] == "| language | eval tokens | before training | baseline (mean ± sd) | Δ selfish |"
    # sd of (16, 18) = sqrt(2); -3 +- t(0.975, df 1) * sd(-2, -4) / sqrt(2) = -3 +- 12.7062
    assert table[4] == "| nya | 90 | 17.0000 ± 1.4142 | 6.0000 ± 2.8284 | -3.0000 [-15.7062, +9.7062] |"
    nll = table[table.index("**Per-token-mean NLL**") + 4]
    assert nll.startswith(f"| nya | {3 * math.log(2) + 1:.4f} ± {math.sqrt(2) * math.log(2):.4f} | -")
    # the figure's bars are the same numbers: before (16, 18), baseline (4, 8), selfish - baseline (-2, -4)
    absolute, change = bits_per_char_bars([row], ["baseline", "selfish"])
    assert [(b.series, b.mean) for b in absolute] == [("before training", 17.0), ("baseline", 6.0), ("selfish", 3.0)]
    assert absolute[1].low == pytest.approx(math.sqrt(8))  # sd of (4, 8)
    (delta,) = change
    # t(0.975, df 1) * sd / sqrt(n), sd of (-2, -4) = sqrt(2)
    assert delta.mean == -3.0 and delta.low == pytest.approx(12.7062 * math.sqrt(2) / math.sqrt(2), rel=1e-4)
    compact = language_contrast_table([row], ["baseline", "selfish"]).splitlines()
    assert compact[0] == "| language | baseline (mean ± sd) | Δ selfish |"
    assert compact[2] == "| nya | 6.0000 ± 2.8284 | -3.0000 [-15.7062, +9.7062] |"  # -3 +- 12.7062
    for run in results["runs"]:
        run["history"] = run["history"][1:]  # no evaluation before training: no column
    assert "before" not in language_tables(subset_rows(results), summarize(results))
    assert [b.series for b in bits_per_char_bars(subset_rows(results), ["baseline", "selfish"])[0]] == [
        "baseline",
        "selfish",
    ]


def test_each_language_gets_its_frequency_groups_with_the_model_before_training():
    """`summarize(results, subset)`: a language's own eval_<code>_<group>_<stat>, and each group's NLL at step 0."""
    from hf_selfish.reporting.report import render_report
    from hf_selfish.reporting.summary import summarize

    def run(arm, seed, nll):
        final = {"eval_loss": 9.0, "eval_eng_loss": 1.0, "step": 4}
        final |= {"eval_eng_rank_1-10_nll": nll, "eval_eng_rank_1-10_tokens": 7, "eval_eng_rank_1-10_types": 3}
        final |= {"eval_eng_unseen_tokens": 0, "eval_eng_unseen_types": 0}  # no unseen token: absent
        final |= {"eval_rank_1-10_nll": 99.0, "eval_rank_1-10_tokens": 70, "eval_rank_1-10_types": 5}
        before = {"eval_loss": 9.0, "eval_eng_loss": 2.0, "eval_eng_rank_1-10_nll": 3.0 + seed, "step": 0}
        return {"arm": arm, "seed": seed, "status": "finished", "final": final, "history": [before, final]}

    results = {
        "arms": [{"name": "baseline"}, {"name": "selfish"}],
        "groups": {"rank_1-10": [0, 1], "unseen": [2]},
        "runs": [run("baseline", 1, 2.0), run("baseline", 2, 3.0), run("selfish", 1, 1.5), run("selfish", 2, 2.0)],
        "eval_subsets": {"eng": {"chars_per_token": 1.0}},
    }
    english = summarize(results, "eng")
    (rank, unseen) = english.groups
    assert rank.tokens == 7 and rank.arms["baseline"].stats["nll"].values == (2.0, 3.0)
    assert rank.arms["selfish"].delta["nll"].values == (-0.5, -1.0) and unseen.absent
    assert english.before["rank_1-10"].values == (4.0, 5.0)  # one per seed: the arms of a seed start alike
    assert english.eval_loss["baseline"].stats["eval_loss"].values == (1.0, 1.0)
    assert summarize(results).groups[0].arms["baseline"].stats["nll"].values == (99.0, 99.0)  # the whole eval set
    assert not summarize(results).before
    report = render_report(results)
    section = report[report.index("### eng: eval per-token-mean NLL per frequency group") :]
    assert "| bucket | eval tokens (types) | before training | baseline | selfish | Δ selfish-baseline |" in section
    # paired differences (-0.5, -1.0): -0.75 +- t(0.975, df 1) * sd / sqrt(2) = -0.75 +- 12.706 * 0.35355 / 1.41421
    assert (
        "| ranks 1-10 | 7 (3) | 4.5000 ± 0.7071 | 2.5000 ± 0.7071 | 1.7500 ± 0.3536 | -0.7500 [-3.9266, +2.4266] |"
        in section
    )
