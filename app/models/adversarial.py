"""Adversarial detector architectures (d)."""
