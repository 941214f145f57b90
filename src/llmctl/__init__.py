"""llmctl: manage llama.cpp's llama-server from validated profiles."""

__version__ = "0.1.0"
