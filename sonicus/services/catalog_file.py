"""A catalog file as the ``seed`` and ``dev-media`` commands read it (YAML or JSON): a list of
packages or ``{packages: [...]}``. Whatever is wrong with the file is a ``ValueError`` whose
message is one line for the operator, never a parser's traceback:

- malformed YAML names the place; a file nested deeper than ``MAX_JSON_DEPTH`` levels (no
  catalog comes near) is refused before a parser recurses into it;
- an integer literal too long for the interpreter to convert (its 4,300-digit guard) is read
  as an infinite float, which the package schema refuses naming the package and the field,
  as the API refuses one in a body.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..validation import MAX_JSON_DEPTH, json_too_deep, load_json_body

_NESTED_TOO_DEEPLY = f"nested more than {MAX_JSON_DEPTH} levels deep"


class _CatalogLoader(yaml.SafeLoader):
    """YAML's safe loader, with integers past the interpreter's digit limit read as ``inf``."""

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            return float("inf")


_CatalogLoader.add_constructor("tag:yaml.org,2002:int", _CatalogLoader.construct_yaml_int)


def _yaml_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the YAML ``text`` nests sequences/mappings deeper than ``limit`` levels.
    Reads the parser's events (a loop, unlike composing the document, which recurses)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > limit:
                return True
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return False


def load_catalog_file(path: str | Path) -> list[dict]:
    """Read a catalog file (YAML or JSON): a list of packages or ``{packages: [...]}``;
    ``ValueError`` when it is not one (malformed YAML or JSON included)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            raw = text.encode("utf-8")
            if json_too_deep(raw):
                raise ValueError(f"{path.name}: {_NESTED_TOO_DEEPLY}")
            data = load_json_body(raw)
        else:
            if _yaml_too_deep(text):
                raise ValueError(f"{path.name}: {_NESTED_TOO_DEEPLY}")
            data = yaml.load(text, Loader=_CatalogLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:  # one line naming the place, as a bad JSON file gets
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ValueError(f"{path.name}: {problem}{where}") from None
    if isinstance(data, dict):
        data = data.get("packages")
    if not isinstance(data, list):
        raise ValueError("a catalog file holds a list of packages (or {packages: [...]})")
    return data
