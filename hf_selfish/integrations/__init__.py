"""Optional integrations with other training libraries; each module imports its library on import.

- :mod:`hf_selfish.integrations.trl`: ``SelfishSFTTrainer`` / ``SelfishSFTConfig`` (``pip install hf_selfish[trl]``).
"""
