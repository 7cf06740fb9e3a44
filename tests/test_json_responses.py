"""JSON responses: the same documents as Flask's own encoder gives, whatever the values."""

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

from flask.json.provider import DefaultJSONProvider


def _both(app, payload):
    with app.app_context():
        fast = app.json.response(payload)
        plain = DefaultJSONProvider(app).response(payload)
    return fast, plain


def test_values_read_back_as_flasks_own_encoder_writes_them(app):
    payload = {"name": "Zoë 眠り", "when": datetime(2026, 11, 25, 8, 30, tzinfo=UTC),
               "day": date(2026, 11, 25), "price": Decimal("9.99"), "none": None,
               "id": UUID("12345678-1234-5678-1234-567812345678"), "nested": {"b": 1, "a": [1.5]}}
    fast, plain = _both(app, payload)
    assert fast.mimetype == "application/json"
    assert json.loads(fast.get_data()) == json.loads(plain.get_data())
    text = fast.get_data(as_text=True)
    assert text.index('"day"') < text.index('"id"') < text.index('"name"')  # keys sorted
    assert text.endswith("}\n") and '": ' not in text and ',"' in text  # compact


def test_a_value_past_64_bits_is_still_written(app):
    fast, plain = _both(app, {"big": 2**70})
    assert json.loads(fast.get_data()) == {"big": 2**70} == json.loads(plain.get_data())


def test_a_profile_with_non_ascii_names_round_trips(client, auth):
    headers = auth("zoe@example.com")
    res = client.put("/api/user/profile", headers=headers, json={"display_name": "Zoë 眠り"})
    assert res.status_code == 200
    assert res.json["data"]["display_name"] == "Zoë 眠り"
    assert client.get("/api/user/profile", headers=headers).json["data"]["display_name"] \
        == "Zoë 眠り"
