"""Generate the BlogSite CustomResourceDefinition from the pydantic models.

pydantic emits JSON Schema with `$ref`s, `anyOf: [X, null]` for optionals and
titles; Kubernetes wants a *structural* OpenAPI v3 schema with everything
inlined. This module does that translation and nothing else, so the models stay
the single source of truth. `tests/unit/test_crd.py` fails when the committed
`crds/blogsite.yaml` differs from what this produces.
"""

from __future__ import annotations

from typing import Any

import yaml

from blogsite_operator import models

CRD_NAME = f"{models.PLURAL}.{models.GROUP}"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Primary",
        "type": "string",
        "jsonPath": ".spec.domains[0]",
        "description": "Primary domain",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether the site is serving",
    },
    {
        "name": "Address",
        "type": "string",
        "jsonPath": ".status.externalAddresses[0]",
        "description": "The frontend's external address (a load balancer's IP or name)",
    },
    {
        "name": "Cert-Expiry",
        # A string: kubectl renders "date" columns as an age, and a future
        # time as "<invalid>".
        "type": "string",
        "jsonPath": ".status.certificate.notAfter",
        "description": "When the served certificate expires",
    },
    {
        "name": "Rollout",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="RolloutHealthy")].reason',
        "description": "Healthy, Progressing, RolledBack, RolloutFailed or Degraded",
    },
    {
        # What runs, not what the spec asks for: after a revert they differ.
        "name": "Image",
        "type": "string",
        "jsonPath": ".status.components.daedalus.image",
        "description": "The daedalus image rolled out",
    },
    {
        "name": "Issuer",
        "type": "string",
        "jsonPath": ".status.certificate.issuer",
        "description": "The CA of the served certificate",
        "priority": 1,  # kubectl get -o wide
    },
    {
        "name": "Test-CA",
        "type": "boolean",
        "jsonPath": ".status.certificate.testIssuer",
        "description": "A staging or test CA browsers do not trust",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# JSON-Schema keywords that a structural CRD schema does not accept or need.
_DROPPED_KEYWORDS = {"title", "additionalProperties", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline refs, collapse `Optional`, and drop non-structural keywords."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node

    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        if "description" in node:
            merged["description"] = node["description"]
        return _structural(merged, defs)

    any_of = node.get("anyOf")
    if any_of is not None:
        non_null = [option for option in any_of if option.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"unions other than Optional[X] are not structural: {node}")
        merged = {**non_null[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        if merged.get("default", ...) is None:
            del merged["default"]
        return _structural(merged, defs)

    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYWORDS and not (
            key == "additionalProperties" and isinstance(value, dict)
        ):
            continue
        if key == "properties":
            result[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        else:
            result[key] = _structural(value, defs)
    if result.get("default") in ([], {}):
        del result["default"]  # empty defaults add noise to every stored object
    return result


def openapi_schema(model: type[models.Model]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return dict(_structural(schema, schema.get("$defs", {})))


def custom_resource_definition() -> dict[str, Any]:
    """The whole CRD object, ready to apply."""
    spec_schema = openapi_schema(models.BlogSiteSpec)
    status_schema = openapi_schema(models.BlogSiteStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "blogsite-operator"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A blog and its domains, run by blogsite-operator: "
                            "nginx frontend, daedalus, ACME certificates and health-gated "
                            "rollouts.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                models.cel(
                                    f"size(self.metadata.name) <= {models.MAX_SITE_NAME_LENGTH}"
                                    " && self.metadata.name.matches("
                                    + models.cel_string(models.SITE_NAME_PATTERN)
                                    + ")",
                                    models.SITE_NAME_MESSAGE,
                                )
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `blogsite-operator crd` from operator/blogsite_operator/models.py.\n"
    header += "# Do not edit: change the models and run `make crd`.\n"
    return header + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=100)
