"""The managed llama-server: launch specs, processes, state, lock, readiness, logs."""
