"""GGUF models the project writes itself, shipped in the wheel: tests, benchmarks and the demo use them."""
