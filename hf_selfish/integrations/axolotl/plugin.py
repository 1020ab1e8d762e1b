"""`SelfishPlugin`, the Axolotl plugin (imports Axolotl); the package's docstring says what it does."""

from __future__ import annotations

import logging

from axolotl.integrations.base import BasePlugin

from .callbacks import SelfishLogCallback, margin_schedule

__all__ = ["SelfishPlugin"]

LOG = logging.getLogger(__name__)


class SelfishPlugin(BasePlugin):
    """Axolotl plugin: hf_selfish's selfish loss for ``axolotl train`` (keys: `SelfishArgs`)."""

    def get_input_args(self) -> str:
        return "hf_selfish.integrations.axolotl.args.SelfishArgs"

    def post_model_load(self, cfg, model):
        """Patch the (adapted) model's forward: its training loss becomes the selfish loss at the start margin."""
        from ... import apply_selfish_loss, selfish_loss_settings
        from ...ops.variants import fused_variant
        from ...trainer import output_vocab_size

        schedule = margin_schedule(cfg, output_vocab_size(model))
        apply_selfish_loss(model, schedule.start, fused=cfg.selfish_fused, chunk_size=cfg.selfish_fused_chunk_size)
        if cfg.selfish_loss_name != "selfish":  # a split variant: its own (constant) margin, one side masked
            variant = fused_variant(cfg.selfish_loss_name, cfg.selfish_loss_kwargs or {}, None, 0)
            settings = selfish_loss_settings(model)
            settings.margin, settings.split = variant.margin, variant.split
        LOG.info("hf_selfish: %s loss, margin %s, fused=%s", cfg.selfish_loss_name, schedule, cfg.selfish_fused)

    def add_callbacks_pre_trainer(self, cfg, model):
        """Before the trainer exists, so the selfish metrics are in each log before the console prints it."""
        from ...trainer import output_vocab_size

        return [SelfishLogCallback(model, margin_schedule(cfg, output_vocab_size(model)), cfg.selfish_loss_name)]

    def post_trainer_create(self, cfg, trainer):
        """Exact gradient accumulation, and rank-bucket evaluation (``selfish_rank_bucket_eval``)."""
        # AxolotlTrainer turns this off for models whose decoder takes no num_items_in_batch (Llama, ...), then
        # averages each micro-batch and divides by the accumulation steps. The patched forward takes the count:
        # the loss is summed over the accumulated batch's labelled tokens and divided by their number, as
        # SelfishTrainer does (so every arm, plain CE included, weighs each token alike).
        trainer.model_accepts_loss_kwargs = True
        if not cfg.selfish_rank_bucket_eval:
            return
        from ...callbacks import attach_rank_bucket_eval
        from ...frequency import TokenFrequency
        from ...trainer import output_vocab_size

        vocab_size = output_vocab_size(trainer.model)
        frequency = TokenFrequency.from_dataset(trainer.train_dataset, vocab_size)
        attach_rank_bucket_eval(trainer, frequency.groups(), vocab_size)
