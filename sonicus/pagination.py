"""Lists a page at a time: the ``page`` and ``per_page`` query arguments of every list route
(``PageArgsSchema``), one page of a select (``paginate``), and what a list service returns
(``Page``), which the Blueprint turns into the envelope's ``data`` and ``pagination``
(``PaginationSchema``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import marshmallow as ma

from .validation import QueryArgsSchema


class PaginationSchema(ma.Schema):
    page = ma.fields.Integer(required=True)
    per_page = ma.fields.Integer(required=True)
    total = ma.fields.Integer(required=True)
    pages = ma.fields.Integer(required=True)


class PageArgsSchema(QueryArgsSchema):
    """Query arguments of every list route; list routes' own query schemas extend it."""

    page = ma.fields.Integer(load_default=1, validate=ma.validate.Range(min=1, max=100000))
    per_page = ma.fields.Integer(load_default=20, validate=ma.validate.Range(min=1, max=100))


@dataclass(frozen=True)
class Page:
    """One page of a list: what list services return; the Blueprint turns it into ``data``
    (the items) and the envelope's ``pagination``."""

    items: list
    total: int
    page: int
    per_page: int

    @property
    def pagination(self) -> dict:
        pages = math.ceil(self.total / self.per_page) if self.total else 0
        return {"page": self.page, "per_page": self.per_page, "total": self.total,
                "pages": pages}


def paginate(db, statement, args: dict) -> Page:
    """Run one page of a select (``args``: the list route's ``page`` and ``per_page``)."""
    page, per_page = args["page"], args["per_page"]
    result = db.paginate(statement, page=page, per_page=per_page, error_out=False,
                         max_per_page=100)
    return Page(list(result.items), result.total or 0, page, per_page)
