"""What input the API accepts, checked in one place for every route (API.md, Envelope).

- Text: no string anywhere in an input (a body, a query argument, a token's identity
  claims, a webhook) holds a NUL character or an unpaired surrogate. PostgreSQL cannot store
  the first, UTF-8 cannot encode the second; both are refused with the field's name.
- Integers are strict: a JSON body's integer is a JSON integer (not a float, a boolean or a
  numeric string), a query argument's is ASCII digits; and it fits the database's
  ``integer`` column.
- Booleans in a JSON body are JSON ``true`` or ``false`` (not ``"yes"``, ``1`` or ``"false"``);
  a query argument's are marshmallow's words (``true``, ``1``, ``false``, ``0``, ...).
- Errors are bounded (``bounded_errors``): per object the errors of its first
  ``FIELDS_NAMED`` fields (an unknown field's in the order sent), per list those of its first
  ``ITEMS_NAMED`` items, then one line counting the rest; a batch full of unknown fields
  answers about a thousand lines, not one per field sent.
- JSON is nested at most ``MAX_JSON_DEPTH`` levels (checked on the raw body, before any
  parser recurses into it). A JSON body is read by ``load_json_body``: an integer literal
  too long for Python to convert is refused by the field it is given to, like any other
  integer out of range, instead of failing the parse.

``InputSchema`` carries the first two for every input schema (bodies derive from it through
``schemas.common.StrictSchema``, query arguments through ``QueryArgsSchema``); the depth is
checked once per request in ``web.py``.
"""

from __future__ import annotations

import json
import re

import marshmallow as ma

MAX_JSON_DEPTH = 32
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
HOSTILE_TEXT_MESSAGE = "Must not contain NUL characters or unpaired surrogates."
NOT_AN_INTEGER = "Not a valid integer."
NOT_A_BOOLEAN = "Not a valid boolean."
FIELDS_NAMED = 10  # per object: the errors of this many fields are named, the rest counted
ITEMS_NAMED = 100  # per list: the errors of this many items (a whole sync batch), the rest counted

# Any surrogate code point in a str is unpaired: a JSON pair decodes to one character.
_HOSTILE_TEXT = re.compile("[\x00\ud800-\udfff]")
_ASCII_INTEGER = re.compile(r"-?[0-9]{1,20}")
_JSON_TOKENS = re.compile(rb'[\[\]{}"\\]')
_INTEGER_COLUMN = ma.validate.Range(min=INT32_MIN, max=INT32_MAX)


# Embeddings, overrides (U+202A..U+202E) and isolates (U+2066..U+2069): they reorder the text
# around them, so a name shown in an admin screen or an export reads as something else
# ("Trojan Source"). Right-to-left letters and the implicit marks (U+200E, U+200F, U+061C)
# need none of them. Refused in names, titles, package descriptions and listening notes
# (``schemas.common.no_bidi_controls``), left out of a name taken from a token
# (``without_bidi_controls``).
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def has_bidi_controls(value: str) -> bool:
    return _BIDI_CONTROLS.search(value) is not None


def without_bidi_controls(value: str) -> str:
    return _BIDI_CONTROLS.sub("", value)


def is_hostile_text(value: str) -> bool:
    """True when ``value`` holds a NUL character or an unpaired surrogate."""
    return _HOSTILE_TEXT.search(value) is not None


def hostile_text_errors(data):
    """Where in ``data`` (JSON-like: mappings, lists, strings) a string or a key is hostile,
    as marshmallow error messages (``{"field": {"0": [message]}}``); None when nowhere."""
    if isinstance(data, str):
        return [HOSTILE_TEXT_MESSAGE] if is_hostile_text(data) else None
    if isinstance(data, dict) or hasattr(data, "items"):
        errors = {}
        for key, value in data.items():
            if isinstance(key, str) and is_hostile_text(key):
                errors.setdefault("_schema", []).append(f"A field name: {HOSTILE_TEXT_MESSAGE}")
                continue
            found = hostile_text_errors(value)
            if found:
                errors[key] = found
        return errors or None
    if isinstance(data, (list, tuple)):
        errors = {index: found for index, item in enumerate(data)
                  if (found := hostile_text_errors(item))}
        return errors or None
    return None


def bounded_errors(messages):
    """marshmallow error messages with, per object, the errors of its first ``FIELDS_NAMED``
    fields, per list those of its first ``ITEMS_NAMED`` items and per field its first
    ``FIELDS_NAMED`` messages, exactly as they were; the others are counted in one line of the
    object, list or field that holds them (``{"_schema": ["145 more fields refused as well;
    ..."]}`` reads ``sessions.1: 145 more fields refused as well; ...``). Within the bounds,
    the messages as they are."""
    if isinstance(messages, list):
        if len(messages) <= FIELDS_NAMED:
            return messages
        return [*messages[:FIELDS_NAMED],
                f"{len(messages) - FIELDS_NAMED} more errors as well."]
    if not isinstance(messages, dict):
        return messages
    keys = [key for key in messages if key != "_schema"]
    items = bool(keys) and all(isinstance(key, int) for key in keys)
    named = ITEMS_NAMED if items else FIELDS_NAMED
    if len(keys) <= named:
        return {key: bounded_errors(value) for key, value in messages.items()}
    bounded = {key: bounded_errors(messages[key]) for key in keys[:named]}
    what = "items" if items else "fields"
    bounded["_schema"] = [*bounded_errors(messages.get("_schema", [])),
                          f"{len(keys) - named} more {what} refused as well; only the first "
                          f"{named} are named."]
    return bounded


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text ``body`` nests arrays/objects deeper than ``limit`` levels
    (brackets inside strings do not count). Linear, without recursion or parsing."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_string, skip_to = 0, False, -1
    for match in _JSON_TOKENS.finditer(body):
        position = match.start()
        if position < skip_to:
            continue  # the character after a backslash
        token = body[position]
        if in_string:
            if token == 0x5C:  # backslash: the next character is escaped
                skip_to = position + 2
            elif token == 0x22:
                in_string = False
        elif token == 0x22:
            in_string = True
        elif token in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif token in (0x5D, 0x7D):
            depth -= 1
    return False


def _json_integer(literal: str):
    """A JSON integer literal as an int; one past the interpreter's digit limit (4,300: a
    guard against quadratic conversion) as an infinite float, which no integer field takes
    (strict: "Not a valid integer.", naming the field) and no other field mistakes for text."""
    try:
        return int(literal)
    except ValueError:
        return float(literal)


def load_json_body(body: bytes):
    """A request body as JSON (UTF-8). Malformed: ``json.JSONDecodeError`` or
    ``UnicodeDecodeError``, as ``json.loads`` raises them."""
    return json.loads(body.decode("utf-8"), parse_int=_json_integer)


class WideInteger(ma.fields.Integer):
    """An integer that is never stored in an ``integer`` column (its own range says what it
    may be): strict like the others, without the column's range."""


def _within_the_column(check) -> bool:
    """True for a range of the field's own that fits an ``integer`` column: the column's range
    would only add a second, wider message."""
    return (isinstance(check, ma.validate.Range) and check.min is not None
            and check.max is not None and check.min >= INT32_MIN and check.max <= INT32_MAX)


def _integers_of(field):
    """The Integer fields in ``field`` (itself, or a List's items)."""
    if isinstance(field, ma.fields.Integer):
        yield field
    elif isinstance(field, ma.fields.List):
        yield from _integers_of(field.inner)


class InputSchema(ma.Schema):
    """The base of every schema that reads input: hostile text is refused wherever it is,
    integers are strict and fit an ``integer`` column."""

    # Query arguments arrive as text: their integers are ASCII digits instead of JSON numbers.
    integers_from_text = False

    @ma.pre_load
    def refuse_hostile_input(self, data, **kwargs):
        errors = hostile_text_errors(self._checked_part(data)) or {}
        if hasattr(data, "get"):
            for name, field in self.load_fields.items():
                key = field.data_key or name
                value = data.get(key)
                if self.integers_from_text:
                    if isinstance(field, ma.fields.Integer) and isinstance(value, str) \
                            and not _ASCII_INTEGER.fullmatch(value):
                        errors.setdefault(key, [NOT_AN_INTEGER])
                elif isinstance(field, ma.fields.Boolean) and value is not None \
                        and not isinstance(value, bool):
                    errors.setdefault(key, [NOT_A_BOOLEAN])
        if errors:
            raise ma.ValidationError(errors)
        return data

    def handle_error(self, error: ma.ValidationError, data, *, many: bool, **kwargs):
        """Refuse with bounded errors (``bounded_errors``), unknown fields in the order sent
        (marshmallow reports them in no particular order)."""
        messages = error.messages
        if isinstance(messages, dict) and not many and hasattr(data, "keys"):
            known = {field.data_key or name for name, field in self.load_fields.items()}
            unknown = [key for key in data.keys() if key in messages and key not in known]
            messages = {**{key: value for key, value in messages.items()
                           if key not in unknown},
                        **{key: messages[key] for key in unknown}}
        raise ma.ValidationError(bounded_errors(messages), data=error.data,
                                 valid_data=error.valid_data) from None

    def _checked_part(self, data):
        """What of ``data`` is input: everything (a body's unknown fields are refused by
        name anyway); query arguments: only the known ones (the rest is ignored)."""
        if self.unknown != ma.EXCLUDE or not hasattr(data, "items"):
            return data
        known = {field.data_key or name for name, field in self.load_fields.items()}
        return {key: value for key, value in data.items() if key in known}

    def on_bind_field(self, field_name: str, field_obj) -> None:
        super().on_bind_field(field_name, field_obj)
        for integer in _integers_of(field_obj):
            integer.strict = not self.integers_from_text
            # A bound field is a shallow copy of the declared one: never mutate its list.
            if not isinstance(integer, WideInteger) and not any(
                    check is _INTEGER_COLUMN or _within_the_column(check)
                    for check in integer.validators):
                integer.validators = [*integer.validators, _INTEGER_COLUMN]


class QueryArgsSchema(InputSchema):
    """The base of every query-argument schema. Unknown query arguments are ignored (an SPA
    adds cache-busters such as ``?_=1700000000``); bodies stay strict (``StrictSchema``). An
    argument sent empty (``?q=``, ``?category=&page=2``: an SPA's empty search box or "all"
    choice) is taken as not sent: its default, no filter."""

    class Meta:
        unknown = ma.EXCLUDE

    integers_from_text = True

    @ma.pre_load
    def _empty_means_not_sent(self, data, **kwargs):
        if not hasattr(data, "keys"):
            return data
        empty = [key for key in data.keys()
                 if isinstance(data[key], str) and not data[key].strip()]
        if not empty:
            return data
        return {key: data[key] for key in data.keys() if key not in empty}


class NoBodySchema(InputSchema):
    """The body of a write whose route takes none: nothing, or ``{}``. Any field is unknown
    and refused by name, as in every body (a typo is never silently dropped)."""

    class Meta:
        unknown = ma.RAISE
