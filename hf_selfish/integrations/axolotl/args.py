"""The YAML keys of the Axolotl plugin, checked by hf_selfish's own validators (so the messages are the library's).

Axolotl merges this pydantic model into its config: each field is a top-level key of the YAML file, and a bad
value stops ``axolotl train`` at config validation, before any data is prepared or model loaded.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator, model_validator

from ...ops.fused import check_chunk_size
from ...ops.margin import check_schedule, check_top_p, parse_margin, parse_margin_end
from ...ops.params import check_flag
from ...ops.registry import LOSSES, check_loss_params

__all__ = ["PLUGIN_LOSSES", "SelfishArgs"]

# What the plugin trains: the selfish loss (margin, schedule) and the split variants, all inside the model's
# forward (hf_selfish.apply_selfish_loss). The other losses of the registry need SelfishTrainer's compute_loss.
PLUGIN_LOSSES = ("selfish", "selfish_head", "selfish_hidden")


class SelfishArgs(BaseModel):
    """Selfish-loss settings of an Axolotl config (``plugins: [hf_selfish.integrations.axolotl.SelfishPlugin]``)."""

    selfish_margin: float | str | None = 2.0  # null: plain cross-entropy; "auto": ln(V) - ln(1 - selfish_top_p)
    selfish_top_p: float = 0.99
    selfish_margin_schedule: str = "constant"  # constant, linear, cosine (from selfish_margin to selfish_margin_end)
    selfish_margin_end: float | str | None = None
    selfish_fused: bool = True  # the loss from the last hidden state and the head, chunk by chunk: no logits
    selfish_fused_chunk_size: int | None = None
    selfish_loss_name: str = "selfish"
    selfish_loss_kwargs: dict[str, Any] | None = None
    selfish_rank_bucket_eval: bool = False  # per frequency-rank bucket eval metrics (RankBucketEvalCallback)

    @field_validator("selfish_margin", mode="before")
    @classmethod
    def _margin(cls, value):
        return parse_margin(value)

    @field_validator("selfish_margin_end", mode="before")
    @classmethod
    def _margin_end(cls, value):
        return parse_margin_end(value)

    @field_validator("selfish_top_p", mode="before")
    @classmethod
    def _top_p(cls, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"selfish_top_p must be a number strictly between 0 and 1, got {value!r}")
        return check_top_p(float(value))

    @field_validator("selfish_fused", "selfish_rank_bucket_eval", mode="before")
    @classmethod
    def _flag(cls, value, info):
        return check_flag(info.field_name, value)  # bool("false") is True: never cast a flag

    @field_validator("selfish_fused_chunk_size", mode="before")
    @classmethod
    def _chunk_size(cls, value):
        return check_chunk_size(value, "selfish_fused_chunk_size", none="null")

    @model_validator(mode="after")
    def _settings(self):
        check_schedule(self.selfish_margin_schedule, self.selfish_margin, self.selfish_margin_end)
        self.selfish_loss_kwargs = check_plugin_loss(
            self.selfish_loss_name, self.selfish_loss_kwargs, fused=self.selfish_fused
        )
        return self


def check_plugin_loss(name: str, kwargs: dict | None, *, fused: bool) -> dict:
    """``selfish_loss_kwargs`` checked for ``selfish_loss_name`` (one line per mistake, before training)."""
    if name not in LOSSES:
        raise ValueError(f"selfish_loss_name must be one of {', '.join(PLUGIN_LOSSES)}, got {name!r}")
    if name not in PLUGIN_LOSSES:
        raise ValueError(
            f"the Axolotl plugin trains {', '.join(PLUGIN_LOSSES)} (inside the model's forward), not "
            f"selfish_loss_name={name!r}: train that loss with hf_selfish.SelfishTrainer or `hf-selfish compare`"
        )
    if name != "selfish" and not fused:
        raise ValueError(
            f"selfish_loss_name={name!r} is computed by the fused loss only: set selfish_fused: true, or use "
            "selfish_loss_name: selfish"
        )
    kwargs = dict(kwargs or {})
    if name == "selfish" and kwargs:  # its one parameter, the margin, is selfish_margin (with its schedule)
        raise ValueError(
            f"the selfish loss takes its margin from selfish_margin, not selfish_loss_kwargs "
            f"({', '.join(map(repr, sorted(kwargs)))}); set selfish_margin, or selfish_loss_name to the variant "
            "these parameters belong to"
        )
    return check_loss_params(name, kwargs)
