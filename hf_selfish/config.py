"""`SelfishTrainingArguments`: the Trainer's arguments plus the selfish-loss settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .ops.margin import NULL_WORDS, SCHEDULES, check_schedule, check_top_p, parse_margin, parse_margin_end
from .ops.params import check_flag
from .ops.registry import LOSSES, check_loss_params, needs_hidden, takes_head
from .ops.variants import FUSED_VARIANTS

# the losses the fused path computes (selfish_fused=True): the selfish loss and its variants
FUSED_LOSSES = ("selfish", *FUSED_VARIANTS)

__all__ = ["FUSED_LOSSES", "SelfishTrainingArguments", "check_training_numbers"]


@dataclass
class SelfishTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the selfish-loss settings and the choice of training loss."""

    loss_name: str = field(
        default="selfish",
        metadata={
            "help": f"Training loss, one of {', '.join(LOSSES)} (hf_selfish.ops.registry); evaluation is plain "
            "cross-entropy for every loss. 'selfish' takes its margin from selfish_margin."
        },
    )
    loss_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Parameters of the training loss, e.g. '{\"gamma\": 1.0}' for focal (a JSON string on the "
            "command line); unset parameters take the paper's defaults."
        },
    )
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
        default=None,
        metadata={
            "help": "End margin of a linear/cosine schedule (a number, 'auto', or 'inf': anneal to plain "
            "cross-entropy, exp(-margin) going linearly to 0)."
        },
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
            "help": "Train with the fused linear + selfish loss inside the model's forward "
            "(hf_selfish.apply_selfish_loss): no [tokens, vocab] logits (evaluation keeps the full logits)."
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
        for name in ("selfish_fused", "selfish_fused_sparse"):  # bool("false") is True: never cast a flag
            check_flag(name, getattr(self, name))
        every = self.selfish_log_scenarios_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
            raise ValueError(f"selfish_log_scenarios_every must be a number of steps or None (off), got {every!r}")
        self.loss_kwargs = _check_loss(self.loss_name, self.loss_kwargs)
        self.selfish_margin = parse_margin(self.selfish_margin)
        self.selfish_margin_end = parse_margin_end(self.selfish_margin_end)
        check_schedule(self.selfish_margin_schedule, self.selfish_margin, self.selfish_margin_end)
        if self.selfish_fused and self.selfish_log_scenarios_every:
            raise ValueError(
                "selfish_log_scenarios_every needs the full logits' gradient, which the fused loss never builds; "
                "turn off selfish_fused for diagnostic runs"
            )
        if needs_hidden(self.loss_name) and not takes_head(self.loss_name) and self.selfish_log_scenarios_every:
            raise ValueError(
                f"selfish_log_scenarios_every needs the gradient of the model's logits, which {self.loss_name} "
                "(computed from the hidden states) never builds; set selfish_log_scenarios_every=None for it"
            )
        if self.selfish_fused and self.loss_name not in FUSED_LOSSES:
            raise ValueError(
                f"selfish_fused computes {', '.join(FUSED_LOSSES)} only, but loss_name is {self.loss_name!r}; "
                "set selfish_fused=False to train another loss"
            )
        check_top_p(self.selfish_top_p)
        check_training_numbers(self)
        super().__post_init__()


MAX_SEED = 2**32 - 1  # the largest seed numpy's legacy generator (which transformers' set_seed seeds) takes


def check_training_numbers(args: TrainingArguments) -> None:
    """Refuse values the Trainer would accept and then train nothing with (or fail on after data preparation).

    ``max_steps=0`` (one step at learning rate 0), a batch size below 1, a negative seed, and ``eval_steps=0``
    (which the Trainer silently replaces by ``logging_steps``). ``max_steps=-1`` is allowed: the Trainer then
    trains ``num_train_epochs`` epochs (hf_selfish says so in its log).
    """
    if args.max_steps == 0 or (args.max_steps is not None and args.max_steps < -1):
        raise ValueError(
            f"max_steps={args.max_steps} trains nothing; give a positive number of steps, or -1 to train "
            f"num_train_epochs={args.num_train_epochs} epochs"
        )
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
    if isinstance(args.seed, bool) or not isinstance(args.seed, int) or args.seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (random generators refuse negative seeds), got {args.seed!r}")
    if args.seed > MAX_SEED:
        raise ValueError(f"seed must be at most {MAX_SEED} (numpy's random generator refuses larger), got {args.seed}")
    if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "steps" and args.eval_steps is not None:
        if not args.eval_steps > 0:
            raise ValueError(f"eval_steps must be positive with eval_strategy=steps, got {args.eval_steps!r}")


def _check_loss(name: str, kwargs: dict | str | None) -> dict:
    """``loss_kwargs`` as a dict (a JSON string from the command line is parsed), checked for ``loss_name``."""
    if name not in LOSSES:
        raise ValueError(f"loss_name must be one of {', '.join(LOSSES)}, got {name!r}")
    if isinstance(kwargs, str):
        text = kwargs.strip()
        kwargs = None if text in NULL_WORDS or text in ("", "none") else text
        if kwargs is not None:
            try:
                kwargs = json.loads(text)
            except json.JSONDecodeError:
                pass  # not JSON: refused below
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(
            f"loss_kwargs must be a mapping of parameter names to values (on the command line a JSON object "
            f"such as '{{\"gamma\": 1.0}}'), got {kwargs!r}"
        )
    kwargs = dict(kwargs or {})
    if name == "selfish" and kwargs:  # its one parameter, the margin, is selfish_margin (with its schedule)
        if "margin" in kwargs:
            raise ValueError(
                "the selfish loss takes its margin from selfish_margin, not loss_kwargs; set selfish_margin"
            )
        raise ValueError(
            f"loss 'selfish' takes no parameter {', '.join(map(repr, sorted(kwargs)))} in loss_kwargs (its margin is "
            "set with selfish_margin); set loss_name to the loss these parameters belong to"
        )
    return check_loss_params(name, kwargs)
