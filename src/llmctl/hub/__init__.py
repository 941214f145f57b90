"""Hugging Face models: references, what is on this machine, remote headers, and pulls."""
