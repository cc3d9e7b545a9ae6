"""Deepfake detector architectures (g). Filled in by the registry work."""
