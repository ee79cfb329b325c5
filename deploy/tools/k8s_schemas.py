#!/usr/bin/env python3
"""Turns Kubernetes' OpenAPI document and CustomResourceDefinitions into the
strict JSON schemas kubeconform validates against, offline.

    k8s_schemas.py OUTDIR SWAGGER_JSON [CRD_YAML...]

Writes OUTDIR/<group>/<version>/<kind>.json (the core group's directory is its
version: v1/v1/service.json), for kubeconform's
-schema-location 'OUTDIR/{{ .Group }}/{{ .ResourceAPIVersion }}/{{ .ResourceKind }}.json'.

SWAGGER_JSON is api/openapi-spec/swagger.json of the k8s.io/kubernetes Go
module: every definition carrying x-kubernetes-group-version-kind becomes one
file holding the definitions it refers to. Each CRD_YAML (a
CustomResourceDefinition, as KEDA and the Prometheus operator ship them)
gives one file per served version, from its openAPIV3Schema.

Strict, as the API server is for fields: an object schema that lists its
properties gets additionalProperties: false (unless it already says what
extra properties may be, or carries x-kubernetes-preserve-unknown-fields),
so a misspelled field is refused. The OpenAPI spellings JSON Schema lacks
become plain JSON Schema: int-or-string (IntOrString,
x-kubernetes-int-or-string) accepts an integer or a string, a Quantity a
number or a string in Quantity's grammar, nullable: true a null.
"""
import json
import os
import sys

import yaml

INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
# resource.Quantity's grammar: a signed decimal and a suffix (binary SI Ki..Ei,
# decimal SI n u m k M G T P E, or an exponent)
QUANTITY = {"oneOf": [
    {"type": "string",
     "pattern": r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"},
    {"type": "number"}]}
QUANTITY_DEF = "io.k8s.apimachinery.pkg.api.resource.Quantity"
REF_PREFIX = "#/definitions/"


def strict(node):
    """Returns a strict copy of the schema `node` (see the module's doc)."""
    if isinstance(node, list):
        return [strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
        out = dict(INT_OR_STRING)
        if "description" in node:
            out["description"] = node["description"]
        return out
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("example", "default", "enum", "x-kubernetes-list-map-keys"):
            out[key] = value
        else:
            out[key] = strict(value)
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def refs_of(node, found):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            found.add(ref[len(REF_PREFIX):])
        for value in node.values():
            refs_of(value, found)
    elif isinstance(node, list):
        for value in node:
            refs_of(value, found)


def closure(definitions, name):
    """The definitions `name` needs, itself included."""
    seen, todo = set(), [name]
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        if cur not in definitions:
            sys.exit("k8s_schemas: %s refers to the missing definition %s" % (name, cur))
        seen.add(cur)
        found = set()
        refs_of(definitions[cur], found)
        todo.extend(found - seen)
    return seen


def write(outdir, group, version, kind, schema):
    path = os.path.join(outdir, group or version, version, kind.lower() + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as out:
        json.dump(schema, out, sort_keys=True)
    return path


def from_swagger(outdir, path):
    with open(path) as f:
        definitions = json.load(f)["definitions"]
    definitions = {name: (dict(QUANTITY, description=d.get("description", "")) if name == QUANTITY_DEF
                          else strict(d))
                   for name, d in definitions.items()}
    n = 0
    for name, definition in sorted(definitions.items()):
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            # the *List kinds and internal ones (WatchEvent, DeleteOptions,
            # ...) are listed under every group; keep each kind's own group
            if not name.startswith("io.k8s.api.") and not name.startswith("io.k8s.kube-aggregator") \
                    and not name.startswith("io.k8s.apiextensions-apiserver"):
                continue
            schema = dict(definition)
            needed = closure(definitions, name) - {name}
            schema["definitions"] = {d: definitions[d] for d in sorted(needed)}
            write(outdir, gvk["group"], gvk["version"], gvk["kind"], schema)
            n += 1
    return n


def from_crd(outdir, path):
    n = 0
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if not version.get("served", True) or not schema:
                    continue
                write(outdir, spec["group"], version["name"], spec["names"]["kind"], strict(schema))
                n += 1
    if n == 0:
        sys.exit("k8s_schemas: no CustomResourceDefinition schema in %s" % path)
    return n


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    outdir = argv[1]
    n = from_swagger(outdir, argv[2])
    for crd in argv[3:]:
        n += from_crd(outdir, crd)
    print("k8s_schemas: %d schemas in %s" % (n, outdir))


if __name__ == "__main__":
    main(sys.argv)
