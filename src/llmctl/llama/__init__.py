"""llama-server and GGUF: flags, command lines, `--help`, the GGUF reader and writer."""
