"""The body of a 422: each problem pydantic found, by location, message and type only, and
nothing the client chose.

FastAPI's own answer copies pydantic's `input` (and `ctx`): the submitted values, tokens and
passwords included, and text that cannot even be encoded (a lone surrogate from a JSON
`\\ud800`), which turned a bad request into a 500 whose traceback printed the body. Pydantic's
`loc` and `msg` hold client text too, and this module leaves it out:

- `loc` is cut at its first part that is neither an int (a list index, a JSON error's
  position) nor a name the app declares (`declared_names`): an unknown key, a key of a
  `dict[str, X]`, a union member's label. The problem is then reported at the parent.
- `msg` is pydantic's own only when it is built from the schema alone: a pydantic-core error
  type whose `ctx` holds only numbers and schema-derived entries (`SCHEMA_CONTEXT`: a bound,
  a `pattern`, the `expected` values). Otherwise (a validator's text, a parser's complaint,
  a union tag, any custom error) it is the fixed part of that type's message.
- Problems that read the same after this are listed once; the list stops at `MAX_PROBLEMS`
  and before `MAX_INVALID_REQUEST_BYTES`.

Nothing here is logged, and ASCII-only JSON always encodes. The handler that answers with this
body is in `error_handlers.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, get_args

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from pydantic_core.core_schema import ErrorType

# A 422 lists the first problems only: a 64 KiB body can hold thousands of mistakes, and listing
# each made an answer ten times the size of the request (7,708 problems, 674 KB).
MAX_PROBLEMS = 10
# ...and stops before this many bytes, whatever the problems hold.
MAX_INVALID_REQUEST_BYTES = 2048
# A `loc` goes at most this deep (a recursive model's depth is the client's choice) and names
# only declared names up to this long; a message and a type are cut at these lengths. With ASCII
# names and types (pydantic's are), one problem is then at most ~1.7 KiB even with a message
# written all in `\u` escapes, so the first problem always fits in `MAX_INVALID_REQUEST_BYTES`.
MAX_LOC_PARTS = 10
MAX_NAME_CHARS = 64
MAX_MESSAGE_CHARS = 160
MAX_TYPE_CHARS = 64
# `loc` starts with where the problem is; these are FastAPI's names for the places.
LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})
# Error types pydantic-core defines: their messages are its templates. Any other type is a
# custom error (`PydanticCustomError`), whose message is whatever the code wrote, input included.
PYDANTIC_ERROR_TYPES = frozenset(get_args(ErrorType))
# `ctx` entries pydantic fills from the schema (a bound, a pattern, the allowed values, a class
# name, ...), never from the input. A message whose `ctx` holds only these, and numbers, cannot
# quote what was sent.
SCHEMA_CONTEXT = frozenset(
    {
        "class",
        "class_name",
        "decimal_places",
        "discriminator",
        "expected",
        "expected_plural",
        "expected_schemes",
        "expected_tags",
        "expected_version",
        "field_type",
        "ge",
        "gt",
        "le",
        "lt",
        "max_digits",
        "max_length",
        "method_name",
        "min_length",
        "multiple_of",
        "pattern",
        "tz_expected",
        "whole_digits",
    }
)
# What a problem says when pydantic's message would hold input-derived text (the `error` of a
# validator or a parser, a union tag, an attribute name): the message's fixed part.
GENERIC_MESSAGES = {
    "assertion_error": "Assertion failed",
    "bytes_invalid_encoding": "Data should be valid in its encoding",
    "date_from_datetime_parsing": "Input should be a valid date or datetime",
    "date_parsing": "Input should be a valid date in the format YYYY-MM-DD",
    "datetime_from_date_parsing": "Input should be a valid datetime or date",
    "datetime_object_invalid": "Invalid datetime object",
    "datetime_parsing": "Input should be a valid datetime",
    "get_attribute_error": "Error extracting attribute",
    "iteration_error": "Error iterating over object",
    "json_invalid": "Invalid JSON",
    "mapping_type": "Input should be a valid mapping",
    "no_such_attribute": "Object has no such attribute",
    "time_delta_parsing": "Input should be a valid timedelta",
    "time_parsing": "Input should be in a valid time format",
    "union_tag_invalid": "Input tag does not match any of the expected tags",
    "url_parsing": "Input should be a valid URL",
    "url_syntax_violation": "Input violated strict URL syntax rules",
    "uuid_parsing": "Input should be a valid UUID",
    "value_error": "Value error",
}
GENERIC_MESSAGE = "Invalid value"


# `extra="forbid"` documents each body as complete (`additionalProperties: false`).
class ValidationProblem(BaseModel):
    """One reason a request was refused with 422: where, what, and pydantic's error type."""

    model_config = ConfigDict(extra="forbid")
    loc: list[str | int]
    msg: str
    type: str


class InvalidRequest(BaseModel):
    """The body of a 422. It holds nothing the client chose: `loc` names only what the schema
    declares (an unknown key is reported at its parent, without its name), and a message that
    would quote the input is replaced by a fixed one. At most the first 10 problems, and at most
    2 KiB in all."""

    model_config = ConfigDict(extra="forbid")
    detail: list[ValidationProblem]


def invalid_request_body(errors: Iterable[Mapping[str, Any]], names: frozenset[str]) -> str:
    """The 422's body, serialized: pydantic's `errors` as problems that name only `names` (the
    app's `declared_names`), each listed once, at most `MAX_PROBLEMS` of them and at most
    `MAX_INVALID_REQUEST_BYTES` in all."""
    listed: list[str] = []
    size = len('{"detail":[]}')
    for problem in _problems(errors, names):
        if problem in listed:
            continue
        cost = len(problem) + (1 if listed else 0)  # the comma
        if size + cost > MAX_INVALID_REQUEST_BYTES:
            break
        listed.append(problem)
        size += cost
        if len(listed) == MAX_PROBLEMS:
            break
    return '{"detail":[' + ",".join(listed) + "]}"


def _problems(errors: Iterable[Mapping[str, Any]], names: frozenset[str]) -> Iterator[str]:
    """Each of pydantic's errors as one problem, serialized (compact, ASCII-only JSON)."""
    for error in errors:
        problem = {
            "loc": _location(error["loc"], names),
            "msg": _message(error)[:MAX_MESSAGE_CHARS],
            "type": str(error["type"])[:MAX_TYPE_CHARS],
        }
        yield json.dumps(problem, ensure_ascii=True, separators=(",", ":"))


def _location(loc: Iterable[Any], names: frozenset[str]) -> list[str | int]:
    kept: list[str | int] = []
    for part in loc:
        if len(kept) == MAX_LOC_PARTS:
            break
        declared = isinstance(part, str) and part in names
        if not (declared or (isinstance(part, int) and not isinstance(part, bool))):
            break
        kept.append(part)
    return kept


def _message(error: Mapping[str, Any]) -> str:
    kind = str(error["type"])
    context = error.get("ctx") or {}
    from_schema = kind in PYDANTIC_ERROR_TYPES and all(
        key in SCHEMA_CONTEXT or value is None or isinstance(value, (int, float, Decimal))
        for key, value in context.items()
    )
    if from_schema:
        return str(error["msg"])
    return GENERIC_MESSAGES.get(kind, GENERIC_MESSAGE)


def declared_names(app: FastAPI) -> frozenset[str]:
    """Every parameter name and schema property name in the app's OpenAPI document (built even
    when `APP_DOCS` is off), plus FastAPI's location names: what a 422's `loc` may name.

    Made once per app, at its first 422, and kept in its state (`error_handlers.py`). Its size
    is set by the code (the routes and models), never by requests, so keeping it bounds nothing
    new. Names that are not short ASCII are left out, which keeps every 422 ASCII and its size
    provable."""
    found = set(LOCATIONS)
    found.update(_names_in(app.openapi()))
    return frozenset(name for name in found if len(name) <= MAX_NAME_CHARS and name.isascii())


def _names_in(document: Any) -> Iterator[str]:
    """The keys of every `properties` and the `name` of every entry in `parameters`, anywhere in
    the document (all of it comes from the code)."""
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                yield from (name for name in properties if isinstance(name, str))
            parameters = node.get("parameters")
            if isinstance(parameters, list):
                for parameter in parameters:
                    if isinstance(parameter, dict) and isinstance(parameter.get("name"), str):
                        yield parameter["name"]
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
