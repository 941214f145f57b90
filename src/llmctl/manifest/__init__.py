"""The profiles.yaml manifest: YAML with positions, sizes, the schema, loading and validation."""
