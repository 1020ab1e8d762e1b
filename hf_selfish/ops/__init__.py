"""The loss functions themselves: torch only, no transformers, no I/O.

- `loss`: `selfish_cross_entropy` (aligned logits/labels) and `selfish_causal_lm_loss` (shifted).
- `fused`: `linear_selfish_cross_entropy`, hidden x weight -> loss without the ``[N, V]`` logits.
- `logit_transform`: logit scaling and soft-capping inside the fused loss, with their chain rule.
- `margin`: margin validation, the ``auto`` rule and schedules.
- `rivals`, `agg`: the rival rare-token losses (focal, TLAT, logit adjustment, unlikelihood, AGG, ...),
  by name in `registry.LOSSES`; `params`: their parameter rules and token counts.
- `variants`: the selfish variants that separate what its mask does to the head's and the hidden state's
  gradient (``selfish_head``, ``selfish_hidden``) and spare the frequent tokens (``selfish_rare``).
"""

from .fused import linear_selfish_cross_entropy
from .loss import selfish_causal_lm_loss, selfish_cross_entropy, validate_margin
from .margin import MarginSchedule, auto_margin, parse_margin
from .registry import LOSSES, get_loss

__all__ = [
    "LOSSES",
    "MarginSchedule",
    "auto_margin",
    "get_loss",
    "linear_selfish_cross_entropy",
    "parse_margin",
    "selfish_causal_lm_loss",
    "selfish_cross_entropy",
    "validate_margin",
]
