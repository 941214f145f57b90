"""The manifest's JSON Schema, as `llmctl schema` prints it and schema/profiles.schema.json holds it."""

from __future__ import annotations

from typing import Any

from llmctl.manifest.model import ManifestModel, Profile


def manifest_schema() -> dict[str, Any]:
    schema = ManifestModel.model_json_schema()
    defs = schema.setdefault("$defs", {})
    # `defaults` takes any profile field, none required.
    partial = dict(defs.get("Profile", Profile.model_json_schema()))
    partial["required"] = []
    partial.pop("anyOf", None)  # `model` or `hf`: in the profile, not in the defaults
    partial["title"] = "ProfileDefaults"
    defs["ProfileDefaults"] = partial
    schema["properties"]["defaults"] = {"$ref": "#/$defs/ProfileDefaults"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llmctl profiles.yaml"
    return schema
