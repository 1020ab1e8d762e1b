"""`SelfishTrainingArguments`: the Trainer's arguments plus the selfish-loss settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .ops.margin import SCHEDULES, check_schedule, check_top_p, parse_margin

__all__ = ["SelfishTrainingArguments"]


@dataclass
class SelfishTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the selfish-loss settings."""

    selfish_margin: float | str | None = field(
        default=2.0,
        metadata={
            "help": "Keep logits >= logit[target] - margin in the training softmax; None (or inf) is plain "
            "cross-entropy, the baseline arm; 'auto' is ln(V) - ln(1 - selfish_top_p)."
        },
    )
    selfish_top_p: float = field(default=0.99, metadata={"help": "Nucleus of the 'auto' margin."})
    selfish_margin_schedule: str = field(
        default="constant",
        metadata={
            "help": f"Margin over training: one of {', '.join(SCHEDULES)} (from selfish_margin to selfish_margin_end)."
        },
    )
    selfish_margin_end: float | str | None = field(
        default=None, metadata={"help": "End margin of a linear/cosine schedule (a number or 'auto')."}
    )
    selfish_log_scenarios_every: int | None = field(
        default=None,
        metadata={
            "help": "Record the per-token gradient norms of the three scenarios every k optimizer steps "
            "(GradientScenarioCallback; saved as scenarios.safetensors); None: off, zero cost."
        },
    )
    selfish_fused: bool = field(
        default=False,
        metadata={
            "help": "Train with the fused linear + selfish loss: no [tokens, vocab] logits (evaluation "
            "keeps the full logits)."
        },
    )
    selfish_fused_chunk_size: int | None = field(
        default=None, metadata={"help": "Rows per chunk of the fused loss (default: sized from the vocabulary)."}
    )
    selfish_fused_sparse: bool = field(
        default=True,
        metadata={
            "help": "Fused loss: run the gradient matmuls over the vocabulary columns some token of the chunk "
            "keeps only (the masked ones get exactly zero gradient); same result up to rounding."
        },
    )

    def __post_init__(self):
        self.selfish_margin = parse_margin(self.selfish_margin)
        self.selfish_margin_end = parse_margin(self.selfish_margin_end)
        check_schedule(self.selfish_margin_schedule, self.selfish_margin, self.selfish_margin_end)
        if self.selfish_fused and self.selfish_log_scenarios_every:
            raise ValueError(
                "selfish_log_scenarios_every needs the full logits' gradient, which the fused loss never builds; "
                "turn off selfish_fused for diagnostic runs"
            )
        check_top_p(self.selfish_top_p)
        super().__post_init__()
