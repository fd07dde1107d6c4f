"""The committed CRD is exactly what the models generate, and it is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from blogsite_operator import crd

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "blogsite.yaml"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in (node.get("properties") or {}).items():
            found.extend(_walk(value, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            found.extend(_walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            found.extend(_walk(node["additionalProperties"], f"{path}{{}}"))
    return found


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == crd.crd_yaml(), (
        "crds/blogsite.yaml is stale: run `make crd`"
    )


def test_schema_is_structural() -> None:
    schema = crd.custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    for keyword in ("$ref", "anyOf", "allOf", "oneOf", "title:", "$defs"):
        assert keyword not in text
    for path, node in _walk(schema["properties"]["spec"], "spec"):
        assert "type" in node, f"{path} has no type"
        assert node.get("additionalProperties") is not False, path


def test_every_spec_field_is_described_for_kubectl_explain() -> None:
    schema = crd.custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    undescribed = [
        path
        for path, node in _walk(schema["properties"]["spec"], "spec")
        if not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert undescribed == []


def test_cel_rules_have_bounded_inputs() -> None:
    """The API server rejects CEL rules whose cost it cannot bound."""
    schema = crd.custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema["properties"]["spec"], "spec"):
        if node.get("type") == "string" and node.get("x-kubernetes-validations"):
            assert "maxLength" in node, f"{path}: string with CEL rules needs maxLength"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: arrays need maxItems"


def test_names_and_columns() -> None:
    definition = crd.custom_resource_definition()
    spec = definition["spec"]
    assert definition["metadata"]["name"] == "blogsites.blog.daedalus.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["blog"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        "Primary",
        "Ready",
        "Address",
        "Cert-Expiry",
        "Rollout",
        "Image",
        "Issuer",
        "Test-CA",
        "Age",
    ]
