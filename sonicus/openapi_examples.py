"""The examples of the OpenAPI document (``openapi.finish_document``): every property of every
schema, and every argument, without an example of its own gets one made from its name
(``NAMED_EXAMPLES``, used only where the value fits the property's type), its format
(``FORMAT_EXAMPLES``), its enum, its bounds or its type, so every request body and response has
an example. A reference (``$ref``, ``allOf``...) gets none: the schema it names has its own.

Plain functions over the document's dicts; nothing here knows Flask or the app.
"""

from __future__ import annotations

# Examples by property name, for properties that give none (checked against each schema).
NAMED_EXAMPLES = {
    "email": "listener@example.com",
    "display_name": "Alex Listener",
    "timezone": "Europe/Berlin",
    "slug": "deep-sleep-waves",
    "title": "Deep sleep waves",
    "description": "Slow waves for falling asleep.",
    "category": "sleep",
    "media_path": "sleep/deep-sleep-01.mp3",
    "note": "Felt calmer afterwards.",
    "message": "Done.",
    "reference": "chk_3f9a1c2b",
    "currency": "USD",
    "comment": "Not using it enough right now.",
    "reason": "Too expensive for me.",
    "day_start_hour": 0,
    "mood_before": 4,
    "mood_after": 7,
    "listened_seconds": 600,
    "duration_seconds": 900,
    "daily_goal_minutes": 20,
    "page": 1,
    "per_page": 20,
    "total": 57,
    "pages": 3,
}
FORMAT_EXAMPLES = {
    "date-time": "2026-11-30T07:30:00+00:00",
    "date": "2026-11-30",
    "decimal": "9.99",
    "uuid": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "email": "listener@example.com",
    "uri": "https://app.example.com/",
    "url": "https://app.example.com/",
}


def example_for(name: str | None, prop: dict):
    """An example value for one property schema (``None`` when it is a reference)."""
    if "example" in prop:
        return prop["example"]
    if "$ref" in prop or "allOf" in prop or "anyOf" in prop or "oneOf" in prop:
        return None
    enum = [value for value in prop.get("enum", ()) if value is not None]
    if enum:
        return enum[0]
    if "enum" in prop:  # only null
        return None
    kind = prop.get("type")
    if kind == "array":
        item = example_for(None, prop.get("items", {}))
        return [] if item is None else [item]
    if kind == "object" or (kind is None and "properties" in prop):
        return {} if "properties" not in prop else None
    if name in NAMED_EXAMPLES and (kind is None or isinstance(NAMED_EXAMPLES[name],
                                                              _PYTHON_TYPES.get(kind, object))):
        return NAMED_EXAMPLES[name]
    if name and (name.endswith("_url") or name == "url"):
        return "https://app.example.com/"
    if prop.get("format") in FORMAT_EXAMPLES and kind in (None, "string"):
        return FORMAT_EXAMPLES[prop["format"]]
    if kind in ("integer", "number"):
        low = prop.get("minimum", 1)
        high = prop.get("maximum")
        value = max(low, 1) if high is None else min(max(low, 1), high)
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "string":
        length = prop.get("minLength", 0)
        text = "text"
        return text if len(text) >= length else text + "x" * (length - len(text))
    return None


_PYTHON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool}


def add_examples(node, name: str | None = None) -> None:
    """Walk a schema, giving each property (and array item) without one an example."""
    if not isinstance(node, dict):
        return
    for prop_name, prop in node.get("properties", {}).items():
        add_examples(prop, prop_name)
        if "example" not in prop and "$ref" not in prop:
            value = example_for(prop_name, prop)
            if value is not None or "enum" in prop:
                prop["example"] = value
    if isinstance(node.get("items"), dict):
        add_examples(node["items"], name)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key, ()):
            add_examples(sub, name)
    if isinstance(node.get("additionalProperties"), dict):
        add_examples(node["additionalProperties"], name)
