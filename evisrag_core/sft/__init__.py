"""Supervised fine-tuning (spec §6): conversations and collator, the training loop, and the dry-run preflight."""
