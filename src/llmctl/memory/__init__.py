"""Memory: estimates from GGUF shapes and launch options, and what to change to fit."""
