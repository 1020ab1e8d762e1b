"""Optional integrations with other training libraries; each module imports its library on import.

- :mod:`hf_selfish.integrations.trl`: ``SelfishSFTTrainer`` / ``SelfishSFTConfig`` (``pip install hf_selfish[trl]``).
- :mod:`hf_selfish.integrations.axolotl`: ``SelfishPlugin``, for ``plugins:`` in an Axolotl config (Axolotl pins its own
  transformers: install it in a venv of its own, then hf_selfish with ``--no-deps``).
"""
