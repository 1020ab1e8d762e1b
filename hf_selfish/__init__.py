"""hf_selfish: selfish-token hard-negative masking for the Hugging Face Trainer."""
