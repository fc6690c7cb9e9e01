"""A corpus of JSON schemas whose shortest instances are a few dozen tokens, covering the features clients use."""

from __future__ import annotations

from typing import Any

_S = {"type": "string", "maxLength": 6}
_INT = {"type": "integer", "minimum": 0, "maximum": 99}
_DEFS_POINT = {
    "$defs": {"point": {"type": "object", "properties": {"x": _INT, "y": _INT}, "required": ["x", "y"]}},
}

SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    # scalars ------------------------------------------------------------------------------------------------
    ("bool", {"type": "boolean"}),
    ("null", {"type": "null"}),
    ("int_bounded", {"type": "integer", "minimum": -5, "maximum": 5}),
    ("int_exclusive", {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}),
    ("int_large_range", {"type": "integer", "minimum": 100, "maximum": 999}),
    ("number_bounded", {"type": "number", "minimum": 0, "maximum": 1}),
    ("number_negative", {"type": "number", "minimum": -10.5, "maximum": -0.5}),
    ("string_short", {"type": "string", "maxLength": 4}),
    ("string_min_max", {"type": "string", "minLength": 2, "maxLength": 5}),
    ("string_pattern_word", {"type": "string", "pattern": "^[a-z]{1,8}$"}),
    ("string_pattern_code", {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}),
    ("string_pattern_hex", {"type": "string", "pattern": "^#[0-9a-f]{6}$"}),
    ("format_ipv4", {"type": "string", "format": "ipv4"}),
    ("format_uuid", {"type": "string", "format": "uuid"}),
    ("enum_strings", {"enum": ["red", "green", "blue"]}),
    ("enum_mixed", {"enum": [1, "two", None, True]}),
    ("const_string", {"const": "fixed"}),
    ("const_object", {"const": {"a": 1, "b": [True, None]}}),
    # objects ------------------------------------------------------------------------------------------------
    ("object_required", {"type": "object", "properties": {"name": _S, "age": _INT}, "required": ["name", "age"]}),
    ("object_optional", {"type": "object", "properties": {"a": _INT, "b": {"type": "boolean"}}, "required": ["a"]}),
    ("object_all_optional", {"type": "object", "properties": {"a": _INT, "b": _S}}),
    ("object_enum_field", {
        "type": "object", "properties": {"color": {"enum": ["red", "blue"]}, "size": _INT}, "required": ["color"],
    }),
    ("object_const_field", {
        "type": "object", "properties": {"kind": {"const": "user"}, "id": _INT}, "required": ["kind", "id"],
    }),
    ("object_nested", {
        "type": "object",
        "properties": {"user": {"type": "object", "properties": {"id": _INT, "ok": {"type": "boolean"}},
                                "required": ["id", "ok"]}},
        "required": ["user"],
    }),
    ("object_deep", {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {
            "c": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["c"]}}, "required": ["b"]}},
        "required": ["a"],
    }),
    ("object_nullable", {"type": "object", "properties": {"v": {"type": ["integer", "null"], "maximum": 9,
                                                                "minimum": 0}}, "required": ["v"]}),
    ("object_bools", {"type": "object", "properties": {k: {"type": "boolean"} for k in "abcd"},
                      "required": list("abcd")}),
    ("object_mixed_scalars", {
        "type": "object",
        "properties": {"i": _INT, "f": {"type": "number", "minimum": 0, "maximum": 9}, "s": _S, "b": {"type": "boolean"},
                       "n": {"type": "null"}},
        "required": ["i", "f", "s", "b", "n"],
    }),
    ("object_pattern_field", {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                              "required": ["zip"]}),
    ("object_format_field", {"type": "object", "properties": {"ip": {"type": "string", "format": "ipv4"}},
                             "required": ["ip"]}),
    ("object_empty", {"type": "object", "properties": {}}),
    # arrays -------------------------------------------------------------------------------------------------
    ("array_ints", {"type": "array", "items": _INT, "minItems": 1, "maxItems": 3}),
    ("array_exact", {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2}),
    ("array_empty_allowed", {"type": "array", "items": _INT, "maxItems": 2}),
    ("array_enum", {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 4}),
    ("array_objects", {
        "type": "array", "minItems": 1, "maxItems": 2,
        "items": {"type": "object", "properties": {"id": _INT}, "required": ["id"]},
    }),
    ("array_nested", {"type": "array", "minItems": 1, "maxItems": 2,
                      "items": {"type": "array", "items": _INT, "minItems": 1, "maxItems": 2}}),
    ("array_tuple", {"type": "array", "prefixItems": [_INT, {"type": "boolean"}], "items": False}),
    ("array_strings", {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 2}),
    ("object_with_array", {
        "type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3}},
        "required": ["tags"],
    }),
    # references ---------------------------------------------------------------------------------------------
    ("ref_point", {**_DEFS_POINT, "$ref": "#/$defs/point"}),
    ("ref_in_property", {**_DEFS_POINT, "type": "object", "properties": {"p": {"$ref": "#/$defs/point"}},
                         "required": ["p"]}),
    ("ref_in_array", {**_DEFS_POINT, "type": "array", "items": {"$ref": "#/$defs/point"}, "minItems": 1,
                      "maxItems": 2}),
    ("ref_two_defs", {
        "$defs": {"id": _INT, "flag": {"type": "boolean"}},
        "type": "object", "properties": {"id": {"$ref": "#/$defs/id"}, "on": {"$ref": "#/$defs/flag"}},
        "required": ["id", "on"],
    }),
    ("ref_chain", {
        "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"type": "integer", "minimum": 1, "maximum": 3}},
        "$ref": "#/$defs/a",
    }),
    ("ref_enum", {"$defs": {"level": {"enum": ["low", "high"]}}, "type": "object",
                  "properties": {"level": {"$ref": "#/$defs/level"}}, "required": ["level"]}),
    # combinators --------------------------------------------------------------------------------------------
    ("anyof_scalar", {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]}),
    ("anyof_objects", {"anyOf": [
        {"type": "object", "properties": {"cat": {"const": "meow"}}, "required": ["cat"]},
        {"type": "object", "properties": {"dog": {"const": "woof"}}, "required": ["dog"]},
    ]}),
    ("anyof_null", {"type": "object", "properties": {"x": {"anyOf": [_INT, {"type": "null"}]}}, "required": ["x"]}),
    ("anyof_ref", {**_DEFS_POINT, "anyOf": [{"$ref": "#/$defs/point"}, {"type": "null"}]}),
    ("anyof_enum_const", {"anyOf": [{"enum": ["a", "b"]}, {"const": 7}]}),
    ("type_list", {"type": ["boolean", "null"]}),
    # realistic shapes ---------------------------------------------------------------------------------------
    ("tool_call", {
        "type": "object",
        "properties": {"name": {"enum": ["get_weather", "get_time"]},
                       "arguments": {"type": "object", "properties": {"city": _S}, "required": ["city"]}},
        "required": ["name", "arguments"],
    }),
    ("classification", {
        "type": "object",
        "properties": {"label": {"enum": ["pos", "neg", "neutral"]}, "score": {"type": "number", "minimum": 0,
                                                                                 "maximum": 1}},
        "required": ["label", "score"],
    }),
    ("address", {
        "type": "object",
        "properties": {"street": _S, "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                       "country": {"enum": ["US", "FR", "DE"]}},
        "required": ["zip", "country"],
    }),
    ("event", {
        "type": "object",
        "properties": {"id": {"type": "string", "format": "uuid"}, "kind": {"enum": ["start", "stop"]},
                       "retries": {"type": "integer", "minimum": 0, "maximum": 3}},
        "required": ["id", "kind", "retries"],
    }),
    ("matrix", {"type": "array", "minItems": 2, "maxItems": 2,
                "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": 0,
                                                                                  "maximum": 9}}}),
]
