"""The one way a TOML table becomes a typed value: pydantic, strict types, unknown keys refused.

Every table is a frozen pydantic dataclass built with ``TABLE`` (``extra="forbid"``, no NaN or
infinity) whose scalar fields use the strict aliases below, so TOML's ``"8"`` is not an integer, ``1``
is not ``true`` and ``3.0`` is not a count. Ranges sit in the type (``Annotated[Int, Field(ge=1)]``);
checks across fields raise ``FieldError`` naming the key. ``parse`` runs the validation and turns the
first problem into one ``ScenarioError`` line in the one wording every file shares::

    FILE: [TABLE] KEY: PROBLEM          e.g.  s.toml: [slo] tpot_ms: must be > 0, got 0
    FILE: [TABLE]: PROBLEM              a problem of the whole table
    FILE: KEY: PROBLEM                  a key at the top of the file
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from harness.errors import ScenarioError

T = TypeVar("T")
Loc = tuple[str | int, ...]

TABLE = ConfigDict(extra="forbid", allow_inf_nan=False)

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # strict floats still take TOML integers (``rate_mbit = 800``)
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]

# Upper bounds on values that size loops, searches or allocations, so a typo cannot hang a command.
MAX_INSTANCES = 1024  # instances per site: the planner's split search is linear in them
MAX_REQUESTS = 1_000_000  # requests of one simulated or replayed run
MAX_TOKENS = 2_097_152  # prompt and context lengths (16x the paper's 128K)
MAX_OUTPUT_TOKENS = 1_000_000

Positive = Annotated[Float, Field(gt=0)]
NonNegative = Annotated[Float, Field(ge=0)]
Fraction = Annotated[Float, Field(gt=0, le=1)]
Instances = Annotated[Int, Field(ge=0, le=MAX_INSTANCES)]
Requests = Annotated[Int, Field(ge=1, le=MAX_REQUESTS)]
Tokens = Annotated[Int, Field(ge=1, le=MAX_TOKENS)]
Seed = Annotated[Int, Field(ge=0)]
Speedup = Annotated[Float, Field(ge=0.01, le=1000)]  # emulated time runs this many times faster


def table(cls: type[T]) -> type[T]:
    """Decorator: a frozen, keyword-only pydantic dataclass that refuses unknown keys."""
    return _pydantic_dataclass(frozen=True, kw_only=True, config=TABLE)(cls)


class FieldError(ValueError):
    """A check across fields failed; ``loc`` is the key (or path) inside the table being validated."""

    def __init__(self, loc: str | Loc, message: str) -> None:
        self.loc: Loc = (loc,) if isinstance(loc, str | int) else tuple(loc)
        self.message = message
        super().__init__(message)


def given(value: Any, cls: type) -> dict[str, Any]:
    """The fields of table class ``cls`` that ``value`` sets (not None), by name."""
    return {f.name: v for f in dataclasses.fields(cls) if (v := getattr(value, f.name)) is not None}


def nested(loc: Loc, build: typing.Callable[[], T]) -> T:
    """Run ``build`` (which validates another table) and re-raise its problem under ``loc``."""
    try:
        return build()
    except ValidationError as exc:
        err = exc.errors()[0]
        raise FieldError(loc + _error_loc(err), _describe(err, known=[])) from None
    except FieldError as exc:
        raise FieldError(loc + exc.loc, exc.message) from None


@cache
def _adapter(schema: Any) -> TypeAdapter:
    return TypeAdapter(schema)


def parse(schema: type[T], data: Any, *, source: str, at: Loc = ()) -> T:
    """Validate ``data`` (a TOML table) as ``schema``; a ``ScenarioError`` in the common wording if not.

    ``source`` names the file; ``at`` is where ``data`` sits in it (``("network",)`` for that table).
    """
    try:
        return _adapter(schema).validate_python(data)
    except ValidationError as exc:
        raise _scenario_error(exc, schema, source, at) from None


def _scenario_error(exc: ValidationError, schema: Any, source: str, at: Loc) -> ScenarioError:
    """One problem of ``exc`` as one line (pydantic reports them all; one is enough to act on)."""
    # An unknown key first: it is usually the typo behind a "missing" one.
    errors = sorted(exc.errors(), key=lambda e: e["type"] not in _UNKNOWN)
    err, loc = errors[0], _error_loc(errors[0])
    shown, node = _walk(schema, loc)
    parent = _walk(schema, loc[:-1])[1]
    unknown = err["type"] in _UNKNOWN
    whole_table = bool(loc) and (_is_table(node) or (unknown and isinstance(err.get("input"), Mapping)))
    message = _describe(err, known=_fields(parent) if unknown else None, table=whole_table)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    if whole_table:
        return ScenarioError(message, where=where(source, at + shown))
    split = max((i for i, part in enumerate(shown) if isinstance(part, str)), default=0)
    return ScenarioError(message, where=where(source, at + shown[:split], shown[split:]))


def override(value: T, flags: Mapping[str, Any]) -> T:
    """``value`` (a table) with the command-line options that were given (None: not given); a bad one
    is named by its flag (``--kv-rate-mbit: must be >= 0.001, got 0``)."""
    changes = {k: v for k, v in flags.items() if v is not None}
    try:
        return dataclasses.replace(value, **changes)  # type: ignore[type-var]
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(_error_loc(err)[0]).replace("_", "-")
        raise ScenarioError(_describe(err), where=flag) from None


def read_toml(data: bytes, *, source: str) -> dict[str, Any]:
    """A TOML document from its bytes; an undecodable or malformed one is a ``ScenarioError``."""
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"not UTF-8 text ({exc.reason})", where=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"invalid TOML: {exc}", where=source) from None


def where(source: str, table_loc: Loc, key: Loc = ()) -> str:
    """``FILE: [TABLE] KEY``, ``FILE: [TABLE]`` or ``FILE: KEY`` (the common error location)."""
    name, item = _dotted(table_loc), _dotted(key)
    if not name:
        return f"{source}: {item}" if item else source
    return f"{source}: [{name}] {item}" if item else f"{source}: [{name}]"


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _error_loc(err: Mapping[str, Any]) -> Loc:
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"].startswith("union_tag"):  # the tag is a key of the table: name it
        loc += (ctx["discriminator"].strip("'"),)
    problem = ctx.get("error")
    return loc + problem.loc if isinstance(problem, FieldError) else loc


# ---------------------------------------------------------------------------------------------- wording

_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
_TYPES = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a table",
    "dataclass_type": "a table",
    "model_attributes_type": "a table",
    "finite_number": "a finite number",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _describe(err: Mapping[str, Any], *, known: list[str] | None = None, table: bool = False) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = f", got {value!r}" if not isinstance(value, Mapping | list) else ""
    if kind in _UNKNOWN:
        return f"unknown {'table' if table else 'key'} (known: {', '.join(known or []) or 'none'})"
    if kind == "missing":
        return "missing (required)"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}{got}"
    if kind in _BOUNDS:
        (bound,) = ctx.values()
        return f"must be {_BOUNDS[kind]} {int(bound) if float(bound).is_integer() else bound}{got}"
    if kind == "literal_error":
        return f"must be one of {_unquote(ctx['expected'])}{got}"
    if kind == "union_tag_invalid":
        return f"must be one of {_unquote(ctx['expected_tags'])}, got {ctx['tag']!r}"
    if kind == "union_tag_not_found":
        return "missing (required)"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item{'s' if ctx['min_length'] != 1 else ''}{got}"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items{got}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}{got}"
    problem = ctx.get("error")
    if isinstance(problem, FieldError):
        return problem.message
    if isinstance(problem, ValueError):
        return str(problem)
    return str(err["msg"])


def _unquote(choices: str) -> str:
    """pydantic's ``'a', 'b' or 'c'`` as ``a, b, c``."""
    return choices.replace(" or ", ", ").replace("'", "")


# ---------------------------------------------------------------------------------------------- schema walk


def _strip(tp: Any) -> Any:
    """The type without ``Annotated`` and without ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (typing.Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _is_table(tp: Any) -> bool:
    tp = _strip(tp)
    return dataclasses.is_dataclass(tp) or get_origin(tp) in (dict, Mapping, typing.Union, types.UnionType)


def _fields(tp: Any) -> list[str]:
    tp = _strip(tp)
    return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []


def _walk(schema: Any, loc: Loc) -> tuple[Loc, Any]:
    """Follow ``loc`` through ``schema``: the location as the user sees it (a tagged union's tag is not
    a table of the file) and the type found there (None where the schema has no more to say)."""
    shown: list[str | int] = []
    node: Any = schema
    for part in loc:
        node = _strip(node)
        origin = get_origin(node)
        if origin in (typing.Union, types.UnionType):  # a tagged union: ``part`` is a tag, or a shared key
            member = next((m for m in get_args(node) if _tag(m) == part), None)
            if member is not None:
                node = member
                continue
        shown.append(part)
        if dataclasses.is_dataclass(node):
            hints = typing.get_type_hints(node, include_extras=True)
            node = hints.get(str(part))
        elif origin in (list, tuple, Sequence):
            node = get_args(node)[0]
        elif origin in (dict, Mapping):
            node = get_args(node)[1]
        else:
            node = None
    return tuple(shown), node


def _tag(member: Any) -> Any:
    member = _strip(member)
    hints = typing.get_type_hints(member) if dataclasses.is_dataclass(member) else {}
    kind = hints.get("kind")
    return get_args(kind)[0] if get_origin(kind) is typing.Literal else None
