"""The Axolotl plugin's YAML keys (`SelfishArgs`): hf_selfish's validators, one message per bad value.

Runs without Axolotl (pydantic only); the plugin itself is tested in tests/test_axolotl.py.
"""

from __future__ import annotations

import math

import pytest

pydantic = pytest.importorskip("pydantic")

from hf_selfish.integrations.axolotl.args import SelfishArgs  # noqa: E402


def test_defaults_and_parsed_values():
    assert SelfishArgs().selfish_margin == 2.0 and SelfishArgs().selfish_fused is True
    assert SelfishArgs(selfish_margin="auto").selfish_margin == "auto"
    assert SelfishArgs(selfish_margin=None).selfish_margin is None
    assert SelfishArgs(selfish_margin="inf").selfish_margin is None  # no masking: plain cross-entropy
    args = SelfishArgs(selfish_margin=1, selfish_margin_schedule="linear", selfish_margin_end="inf")
    assert args.selfish_margin == 1.0 and args.selfish_margin_end == math.inf
    args = SelfishArgs(selfish_loss_name="selfish_head", selfish_loss_kwargs={"margin": 3.0})
    assert args.selfish_loss_kwargs == {"margin": 3.0}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"selfish_margin": -1}, "selfish margin must be a non-negative number or None, got -1.0"),
        ({"selfish_margin": True}, "selfish margin must be a non-negative number or None, got True, a yes/no"),
        ({"selfish_margin": "big"}, "selfish margin must be a non-negative number or None, got 'big'"),
        ({"selfish_fused": "false"}, "selfish_fused must be True or False, got 'false'"),
        ({"selfish_rank_bucket_eval": 1}, "selfish_rank_bucket_eval must be True or False, got 1"),
        ({"selfish_top_p": 1.5}, "selfish_top_p must lie strictly between 0 and 1, got 1.5"),
        (
            {"selfish_margin_schedule": "step"},
            "selfish_margin_schedule must be one of ('constant', 'linear', 'cosine')",
        ),
        ({"selfish_margin_schedule": "linear"}, "a linear margin schedule needs a start margin (selfish_margin) and"),
        ({"selfish_fused_chunk_size": 0}, "selfish_fused_chunk_size must be a positive int or null, got 0"),
        ({"selfish_loss_name": "nope"}, "selfish_loss_name must be one of selfish, selfish_head, selfish_hidden"),
        ({"selfish_loss_name": "focal"}, "the Axolotl plugin trains selfish, selfish_head, selfish_hidden"),
        ({"selfish_loss_name": "selfish_head", "selfish_fused": False}, "is computed by the fused loss only"),
        ({"selfish_loss_kwargs": {"margin": 1.0}}, "the selfish loss takes its margin from selfish_margin"),
        ({"selfish_loss_name": "selfish_head", "selfish_loss_kwargs": {"gamma": 1}}, "takes no parameter 'gamma'"),
    ],
)
def test_each_bad_value_gives_one_error_with_the_library_message(settings, message):
    with pytest.raises(pydantic.ValidationError) as error:
        SelfishArgs(**settings)
    assert error.value.error_count() == 1
    assert message in error.value.errors()[0]["msg"]
