"""EventBridge-style content patterns, matched against a CloudEvent dict.

A trigger's ``filter`` is a pattern with the same shape as the event it selects::

    {"type": [{"prefix": "s3:ObjectCreated:"}],
     "data": {"size": [{"numeric": [">", 0, "<=", 5242880]}],
              "key": [{"suffix": ".jpg"}, {"suffix": ".png"}]}}

We follow Amazon EventBridge (and its open-source matcher, aws/event-ruler) so that people can
reuse patterns and intuition they already have:

- Fields named in a pattern are ANDed; the list at a leaf holds alternatives that are ORed.
  ``"$or": [pattern, pattern, ...]`` ORs whole sub-patterns at one level.
- Leaf alternatives: exact values (string, number, bool, null; ``""`` and ``null`` differ),
  ``prefix``, ``suffix`` (either may hold ``{"equals-ignore-case": s}``), ``equals-ignore-case``,
  ``wildcard`` (``*`` matches any run of characters, ``\\*`` a literal star), ``anything-but``
  (a value, a list of values, or ``{prefix|suffix|equals-ignore-case|wildcard: ...}``),
  ``numeric`` (``[">", 0, "<=", 5]``, ``["=", 3]``), ``exists`` and ``cidr``.
- When the event value is an array, the leaf matches if any element matches. When an
  intermediate node is an array of objects, the sub-pattern must match within one element (the
  "array-consistent" behaviour of event-ruler's JSON matcher).
- A missing field, an empty array or an object where a leaf is expected counts as absent: it
  matches ``{"exists": false}`` and nothing else (not even ``anything-but``).
- ``{}`` matches every event.

Differences from AWS, on purpose: numbers compare exactly as Python numbers (no 15-digit
precision limit or +/-5e9 range), ``equals-ignore-case`` uses Unicode case folding, and matching
is per pattern (no compiled state machine): patterns are small and per-trigger.

``validate_pattern`` runs when a trigger is written, so bad filters get a 4xx saying what and
where. ``matches`` assumes a validated pattern (it runs per event and per trigger, so it does not
re-check everything); on operators it does not know it still raises ``PatternError``.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeGuard
from hub.spec.describe import json_type, short_json

__all__ = ["MAX_PATTERN_BYTES", "MAX_PATTERN_DEPTH", "OPERATORS", "PatternError", "matches", "validate_pattern"]

MAX_PATTERN_DEPTH: Final = 16
"""Objects in a pattern nest at most this deep (``$or`` sub-patterns count as a level). Matching
and validation recurse per level, and a pattern is stored in MongoDB (100 levels at most), so
depth is bounded here rather than found out by a RecursionError or a failed write."""

MAX_PATTERN_BYTES: Final = 16 * 1024
"""A pattern's size as compact JSON: every event is matched against every trigger's pattern."""


class PatternError(ValueError):
    """A filter pattern is malformed. The message names the offending path, e.g. ``data.size[0]``."""


OPERATORS: Final = (
    "anything-but",
    "cidr",
    "equals-ignore-case",
    "exists",
    "numeric",
    "prefix",
    "suffix",
    "wildcard",
)
_ANYTHING_BUT_OPERATORS: Final = ("equals-ignore-case", "prefix", "suffix", "wildcard")
_LOWER_BOUNDS: Final = (">", ">=")
_UPPER_BOUNDS: Final = ("<", "<=")
_NUMERIC_OPERATORS: Final = (*_LOWER_BOUNDS, *_UPPER_BOUNDS, "=")
_OR: Final = "$or"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validate_pattern(pattern: object) -> None:
    """Raise ``PatternError`` unless ``pattern`` is a well-formed content pattern.

    Checked up front so that a trigger with a filter that can never do what its author meant
    (an empty alternatives list, a typo in an operator, a string where a number belongs) is
    refused when it is written rather than silently never matching.
    """
    if not isinstance(pattern, dict):
        raise PatternError(f"pattern: must be a JSON object, got {json_type(pattern)}")
    _validate_object(pattern, "", 1)
    size = len(json.dumps(pattern, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > MAX_PATTERN_BYTES:
        raise PatternError(f"pattern: is {size} bytes as JSON; the limit is {MAX_PATTERN_BYTES}")


def _validate_object(obj: Mapping[Any, Any], path: str, depth: int) -> None:
    if depth > MAX_PATTERN_DEPTH:
        raise PatternError(
            f"{_where(path)}: nested too deeply; patterns may nest at most {MAX_PATTERN_DEPTH} levels"
        )
    for key, value in obj.items():
        if not isinstance(key, str):
            raise PatternError(f"{_where(path)}: field names must be strings, got {key!r}")
        here = _join(path, key)
        if key == _OR:
            _validate_or(value, here, depth + 1)
        elif isinstance(value, dict):
            if not value:
                raise PatternError(
                    f"{here}: empty object; name the fields to match inside it, or remove it"
                )
            _validate_object(value, here, depth + 1)
        elif isinstance(value, list):
            _validate_alternatives(value, here)
        else:
            hint = ""
            if key in OPERATORS:
                hint = (
                    f"; operators go inside the list of the field they test, e.g. "
                    f'"{path.rsplit(".", 1)[-1] or "field"}": [{{"{key}": {short_json(value)}}}]'
                )
            raise PatternError(
                f"{here}: must be a list of alternatives (e.g. [{short_json(value)}]) or a nested "
                f"object, got {json_type(value)}{hint}"
            )


def _validate_or(value: object, path: str, depth: int) -> None:
    if not isinstance(value, list) or len(value) < 2:
        raise PatternError(f"{path}: must be a list of at least two sub-patterns (objects)")
    for index, sub in enumerate(value):
        here = f"{path}[{index}]"
        if not isinstance(sub, dict):
            raise PatternError(f"{here}: must be an object (a sub-pattern), got {json_type(sub)}")
        if not sub:
            raise PatternError(f"{here}: empty sub-pattern; it would make the whole $or match")
        _validate_object(sub, here, depth)


def _validate_alternatives(alternatives: list[Any], path: str) -> None:
    if not alternatives:
        raise PatternError(
            f"{path}: empty list of alternatives can never match; give at least one value or "
            f'matcher (use [{{"exists": true}}] to only require the field)'
        )
    for index, alternative in enumerate(alternatives):
        here = f"{path}[{index}]"
        if isinstance(alternative, dict):
            _validate_matcher(alternative, here)
        elif isinstance(alternative, list):
            raise PatternError(f"{here}: nested lists are not allowed; list alternatives directly")
        else:
            _validate_exact(alternative, here)


def _validate_exact(value: object, path: str) -> None:
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, (int, float)):
        _require_finite(value, path)
        return
    raise PatternError(f"{path}: unsupported value of type {type(value).__name__}")


def _validate_matcher(matcher: Mapping[Any, Any], path: str) -> None:
    if len(matcher) != 1:
        names = ", ".join(repr(k) for k in matcher) or "none"
        raise PatternError(
            f"{path}: a matcher object must hold exactly one operator, got {names}; "
            f"put alternatives in separate list items"
        )
    ((operator, argument),) = matcher.items()
    here = f"{path}.{operator}"
    if operator in ("prefix", "suffix"):
        _validate_affix(argument, here)
    elif operator == "equals-ignore-case":
        _require_string(argument, here)
    elif operator == "wildcard":
        _validate_wildcard(argument, here)
    elif operator == "anything-but":
        _validate_anything_but(argument, here)
    elif operator == "numeric":
        _validate_numeric(argument, here)
    elif operator == "exists":
        if not isinstance(argument, bool):
            raise PatternError(f"{here}: must be true or false, got {short_json(argument)}")
    elif operator == "cidr":
        _validate_cidr(argument, here)
    else:
        raise PatternError(
            f"{path}: unknown operator {operator!r}; expected one of {', '.join(OPERATORS)}"
        )


def _validate_affix(argument: object, path: str) -> None:
    if isinstance(argument, dict):
        if list(argument) != ["equals-ignore-case"]:
            raise PatternError(
                f'{path}: must be a string or {{"equals-ignore-case": "..."}}, got {short_json(argument)}'
            )
        _require_string(argument["equals-ignore-case"], f"{path}.equals-ignore-case")
        return
    _require_string(argument, path)


def _validate_wildcard(argument: object, path: str) -> None:
    text = _require_string(argument, path)
    index = 0
    previous_was_star = False
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 >= len(text) or text[index + 1] not in "*\\":
                raise PatternError(
                    f"{path}: a backslash may only escape '*' or '\\' (at position {index}); "
                    f"write '\\\\' for a literal backslash"
                )
            index += 2
            previous_was_star = False
            continue
        if char == "*" and previous_was_star:
            raise PatternError(f"{path}: consecutive wildcards '**' (at position {index - 1})")
        previous_was_star = char == "*"
        index += 1


def _validate_anything_but(argument: object, path: str) -> None:
    if isinstance(argument, dict):
        if len(argument) != 1 or next(iter(argument)) not in _ANYTHING_BUT_OPERATORS:
            raise PatternError(
                f"{path}: an object here must hold exactly one of "
                f"{', '.join(_ANYTHING_BUT_OPERATORS)}, got {short_json(argument)}"
            )
        ((operator, inner),) = argument.items()
        here = f"{path}.{operator}"
        if isinstance(inner, list) and not inner:
            raise PatternError(f"{here}: empty list; give at least one string")
        for index, text in enumerate(inner if isinstance(inner, list) else [inner]):
            where = f"{here}[{index}]" if isinstance(inner, list) else here
            if operator == "wildcard":
                _validate_wildcard(text, where)
            else:
                _require_string(text, where)
        return
    if isinstance(argument, list):
        if not argument:
            raise PatternError(f"{path}: empty list; give at least one value to exclude")
        if all(isinstance(v, str) for v in argument):
            return
        if all(_is_number(v) for v in argument):
            for index, number in enumerate(argument):
                _require_finite(number, f"{path}[{index}]")
            return
        raise PatternError(f"{path}: list must hold only strings or only numbers")
    if isinstance(argument, str):
        return
    if _is_number(argument):
        _require_finite(argument, path)
        return
    raise PatternError(
        f"{path}: must be a string, a number, a list of them, or an object with one of "
        f"{', '.join(_ANYTHING_BUT_OPERATORS)}; got {json_type(argument)}"
    )


def _validate_numeric(argument: object, path: str) -> None:
    if not isinstance(argument, list) or len(argument) not in (2, 4):
        raise PatternError(
            f'{path}: must be [op, number] or [op, number, op, number], e.g. [">", 0, "<=", 5]'
        )
    bounds: dict[str, tuple[str, int | float]] = {}
    for index in range(0, len(argument), 2):
        operator, operand = argument[index], argument[index + 1]
        if operator not in _NUMERIC_OPERATORS:
            raise PatternError(
                f"{path}[{index}]: unknown comparison {short_json(operator)}; "
                f"expected one of {', '.join(_NUMERIC_OPERATORS)}"
            )
        if not _is_number(operand):
            raise PatternError(
                f"{path}[{index + 1}]: operand of {operator!r} must be a number, "
                f"got {json_type(operand)} {short_json(operand)}"
            )
        _require_finite(operand, f"{path}[{index + 1}]")
        if operator == "=":
            if len(argument) != 2:
                raise PatternError(f"{path}: '=' cannot be combined with another comparison")
            return
        side = "lower" if operator in _LOWER_BOUNDS else "upper"
        if side in bounds:
            raise PatternError(
                f"{path}: two {side} bounds ({bounds[side][0]!r} and {operator!r}); "
                f"give at most one lower (>, >=) and one upper (<, <=) bound"
            )
        bounds[side] = (operator, operand)
    if "lower" in bounds and "upper" in bounds:
        (low_op, low), (high_op, high) = bounds["lower"], bounds["upper"]
        if low > high or (low == high and (low_op == ">" or high_op == "<")):
            raise PatternError(f"{path}: the range is empty; no number can match it")


def _validate_cidr(argument: object, path: str) -> None:
    text = _require_string(argument, path)
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise PatternError(f"{path}: not an IP network in CIDR notation ({exc})") from None


def _require_string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise PatternError(f"{path}: must be a string, got {json_type(value)} {short_json(value)}")
    return value


def _require_finite(value: float, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise PatternError(f"{path}: number must be finite, got {value}")


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """True when the CloudEvent dict ``event`` satisfies the validated ``pattern``."""
    return _match_node(pattern, event)


def _match_node(pattern: Mapping[str, Any], node: object) -> bool:
    """Match an object-level pattern against whatever the event holds at that place.

    An array of objects matches when one element matches the whole sub-pattern; anything that
    is not an object behaves like an empty object, so only ``exists: false`` leaves succeed.
    """
    if isinstance(node, list):
        objects = [item for item in _flatten(node) if isinstance(item, dict)]
        if objects:
            return any(_match_fields(pattern, item) for item in objects)
        return _match_fields(pattern, {})
    if isinstance(node, dict):
        return _match_fields(pattern, node)
    return _match_fields(pattern, {})


def _match_fields(pattern: Mapping[str, Any], obj: Mapping[str, Any]) -> bool:
    for key, sub in pattern.items():
        if key == _OR:
            if not any(_match_fields(alternative, obj) for alternative in sub):
                return False
        elif isinstance(sub, dict):
            if not _match_node(sub, obj.get(key)):
                return False
        elif not _match_leaf(sub, obj.get(key), key in obj):
            return False
    return True


def _match_leaf(alternatives: list[Any], node: object, present: bool) -> bool:
    values = _leaf_values(node) if present else []
    for alternative in alternatives:
        if isinstance(alternative, dict) and "exists" in alternative:
            if bool(values) == alternative["exists"]:
                return True
        elif any(_match_value(alternative, value) for value in values):
            return True
    return False


def _leaf_values(node: object) -> list[Any]:
    """The scalar values at a leaf: the value itself, or the scalars of a (nested) array."""
    if isinstance(node, dict):
        return []
    if isinstance(node, list):
        return [item for item in _flatten(node) if not isinstance(item, dict)]
    return [node]


def _flatten(items: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in items:
        if isinstance(item, list):
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat


def _match_value(alternative: object, value: object) -> bool:
    if not isinstance(alternative, dict):
        return _equal(alternative, value)
    ((operator, argument),) = alternative.items()
    if operator == "prefix":
        return _match_affix(argument, value, str.startswith)
    if operator == "suffix":
        return _match_affix(argument, value, str.endswith)
    if operator == "equals-ignore-case":
        return isinstance(value, str) and value.casefold() == argument.casefold()
    if operator == "wildcard":
        return isinstance(value, str) and _wildcard_match(_wildcard_segments(argument), value)
    if operator == "numeric":
        return _match_numeric(argument, value)
    if operator == "cidr":
        return _match_cidr(argument, value)
    if operator == "anything-but":
        return not _match_excluded(argument, value)
    raise PatternError(f"unknown operator {operator!r}; validate patterns with validate_pattern()")


def _equal(expected: object, value: object) -> bool:
    """JSON equality: null only equals null, booleans only booleans, numbers by value."""
    if expected is None or value is None:
        return expected is value
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(expected, bool) and isinstance(value, bool) and expected == value
    if _is_number(expected) or _is_number(value):
        return _is_number(expected) and _is_number(value) and expected == value
    return isinstance(expected, str) and isinstance(value, str) and expected == value


def _match_affix(argument: object, value: object, test: Callable[[str, str], bool]) -> bool:
    if not isinstance(value, str):
        return False
    if isinstance(argument, dict):
        return test(value.casefold(), str(argument["equals-ignore-case"]).casefold())
    return isinstance(argument, str) and test(value, argument)


def _match_excluded(argument: object, value: object) -> bool:
    """True when ``value`` is one of the things an ``anything-but`` excludes."""
    if isinstance(argument, dict):
        ((operator, inner),) = argument.items()
        texts = inner if isinstance(inner, list) else [inner]
        return any(_match_value({operator: text}, value) for text in texts)
    if isinstance(argument, list):
        return any(_equal(excluded, value) for excluded in argument)
    return _equal(argument, value)


def _match_numeric(argument: list[Any], value: object) -> bool:
    if not _is_number(value):
        return False
    for index in range(0, len(argument), 2):
        operator, operand = argument[index], argument[index + 1]
        if operator == "=" and not value == operand:
            return False
        if operator == ">" and not value > operand:
            return False
        if operator == ">=" and not value >= operand:
            return False
        if operator == "<" and not value < operand:
            return False
        if operator == "<=" and not value <= operand:
            return False
    return True


def _match_cidr(argument: str, value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    network = _network(argument)
    # ipaddress does not check the IP version in ``in``; do it here.
    return address.version == network.version and address in network


@functools.lru_cache(maxsize=1024)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


@functools.lru_cache(maxsize=1024)
def _wildcard_segments(pattern: str) -> tuple[str, ...]:
    """The literal pieces between unescaped stars: ``"a*b\\*c"`` -> ``("a", "b*c")``."""
    segments: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            current.append(pattern[index + 1])
            index += 2
            continue
        if char == "*":
            segments.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    segments.append("".join(current))
    return tuple(segments)


def _wildcard_match(segments: tuple[str, ...], value: str) -> bool:
    """Match literal segments separated by ``*``, without regex backtracking.

    With only ``*`` wildcards, taking the leftmost occurrence of each middle segment is always
    safe, so this runs in O(len(value) * len(pattern)) even for hostile inputs.
    """
    if len(segments) == 1:
        return value == segments[0]
    first, last = segments[0], segments[-1]
    if len(value) < len(first) + len(last):
        return False
    if not value.startswith(first) or not value.endswith(last):
        return False
    position, end = len(first), len(value) - len(last)
    for segment in segments[1:-1]:
        found = value.find(segment, position, end)
        if found < 0:
            return False
        position = found + len(segment)
    return True


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)




def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _where(path: str) -> str:
    return path or "pattern"
