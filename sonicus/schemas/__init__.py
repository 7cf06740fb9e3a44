"""Marshmallow schemas per area: one set serves validation and the OpenAPI document."""
