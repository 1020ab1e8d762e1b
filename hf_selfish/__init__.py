"""hf_selfish: selfish-token hard-negative masking for the Hugging Face Trainer.

    from hf_selfish import SelfishTrainer, SelfishTrainingArguments
    args = SelfishTrainingArguments(output_dir="out", selfish_margin=2.0)   # None: plain CE
    trainer = SelfishTrainer(model=model, args=args, train_dataset=train, eval_dataset=val)
"""

from .loss import selfish_causal_lm_loss, selfish_cross_entropy, validate_margin
from .trainer import SelfishTrainer, SelfishTrainingArguments, selfish_loss_func

__version__ = "0.1.0"

__all__ = [
    "SelfishTrainer",
    "SelfishTrainingArguments",
    "selfish_causal_lm_loss",
    "selfish_cross_entropy",
    "selfish_loss_func",
    "validate_margin",
]
