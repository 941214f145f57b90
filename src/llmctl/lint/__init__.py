"""Lint: every problem in a manifest, from the schema to the machine."""
