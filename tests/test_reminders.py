"""Reminders by Web Push (API.md, Reminders): subscriptions, preferences, the periodic job
that finds due users in SQL, and sending through a push service stand-in that checks VAPID,
with a browser's own keys decrypting what arrives (no mock of pywebpush or of cryptography)."""

from __future__ import annotations

import base64
import os
import stat
import threading
import time
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from sonicus import clock, create_app
from sonicus.extensions import db
from sonicus.models import PushSubscription, ReminderDelivery, ReminderPreferences
from sonicus.services import reminder_claims, reminder_clocks, reminders, webpush
from sonicus.tasks.worker import make_worker


def _subscribe(client, headers, browser) -> int:
    response = client.post("/api/user/push-subscriptions", json=browser.subscription(),
                           headers=headers)
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()["data"]["id"]


def _set_reminders(client, headers, **body):
    response = client.put("/api/user/reminders", json=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def _listener(client, auth, push_service, browser, email="listener@example.com", *,
              timezone="UTC", day_start_hour=0, make_user=None, **preferences):
    """A user (in ``timezone`` and ``day_start_hour`` from the start: a change would wait for
    the day's end) with one browser subscribed and reminders set as given."""
    headers = auth(email)
    if make_user is not None:
        make_user(email, timezone=timezone, day_start_hour=day_start_hour)
    else:
        assert (timezone, day_start_hour) == ("UTC", 0)
    device = browser(push_service.endpoint(email.replace("@", "-at-")))
    _subscribe(client, headers, device)
    _set_reminders(client, headers, enabled=True, **preferences)
    return headers, device


def _claimed(push_app, moment) -> list[tuple[int, date]]:
    with push_app.app_context():
        ids = reminder_claims.claim_due_reminders(moment)
        rows = db.session.execute(select(ReminderDelivery.user_id, ReminderDelivery.local_day)
                                  .where(ReminderDelivery.id.in_(ids))).all()
        db.session.remove()
    return [tuple(row) for row in rows]


def _run_jobs(push_app):
    make_worker(push_app, simple=True).work(burst=True, with_scheduler=True)


# ---- the application server key ---------------------------------------------------------------

def test_vapid_public_key_is_public_and_is_the_signing_key(push_client):
    response = push_client.get("/api/push/vapid-public-key")
    assert response.status_code == 200
    key = response.get_json()["data"]["public_key"]
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert len(raw) == 65 and raw[0] == 4
    assert "=" not in key


def test_development_generates_one_vapid_key_in_the_instance_folder(make_config, tmp_path):
    settings = make_config(SONICUS_ENV="development", INSTANCE_PATH=str(tmp_path),
                           VAPID_PRIVATE_KEY=None)
    first = create_app(settings).test_client().get("/api/push/vapid-public-key")
    again = create_app(settings).test_client().get("/api/push/vapid-public-key")
    assert first.get_json()["data"]["public_key"] == again.get_json()["data"]["public_key"]
    key_file = tmp_path / "vapid_private_key.txt"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["vapid_private_key.txt"]


# ---- push subscriptions -----------------------------------------------------------------------

def test_the_same_endpoint_again_updates_it_and_only_its_owner_deletes_it(
        push_client, auth, push_service, browser):
    me, other = auth("me@example.com"), auth("other@example.com")
    device = browser(push_service.endpoint("phone"))
    created = push_client.post("/api/user/push-subscriptions", json=device.subscription(),
                               headers=me)
    assert created.status_code == 201
    sid = created.get_json()["data"]["id"]
    renewed = browser(device.endpoint)  # the browser renewed its keys
    again = push_client.post("/api/user/push-subscriptions", json=renewed.subscription(),
                             headers=me)
    assert again.status_code == 200 and again.get_json()["data"]["id"] == sid
    laptop = push_client.post("/api/user/push-subscriptions",
                              json=browser(push_service.endpoint("laptop")).subscription(),
                              headers=me)
    assert laptop.status_code == 201 and laptop.get_json()["data"]["id"] != sid
    with push_client.application.app_context():
        stored = db.session.execute(select(PushSubscription).where(
            PushSubscription.id == sid)).scalar_one()
        assert stored.p256dh == renewed.p256dh
    gone = push_client.delete(f"/api/user/push-subscriptions/{sid}", headers=other)
    assert gone.status_code == 404 and gone.get_json()["code"] == "not_found"
    assert push_client.delete(f"/api/user/push-subscriptions/{sid}", headers=me).status_code == 200
    assert push_client.delete(f"/api/user/push-subscriptions/{sid}", headers=me).status_code == 404


@pytest.mark.parametrize("endpoint", [
    "http://169.254.169.254/latest/meta-data/",
    "http://localhost/push/1",
    "https://fcm.googleapis.com.evil.example/fcm/send/x",
    "https://fcm.googleapis.com@evil.example/fcm/send/x",
    "http://127.0.0.1:80@evil.example/push",
    "http://127.0.0.1:8o/push",
    "https://evil.example/https://fcm.googleapis.com/",
    "file:///etc/passwd",
    "https://fcm.googleapis.com/fcm/send/x y",
])
def test_an_endpoint_outside_the_push_services_is_422_naming_endpoint(
        push_client, auth, browser, endpoint):
    response = push_client.post("/api/user/push-subscriptions",
                                json=browser(endpoint).subscription(), headers=auth())
    assert response.status_code == 422
    assert any(e.startswith("endpoint:") for e in response.get_json()["errors"])


def test_a_local_address_is_refused_where_it_is_not_allowed(client, auth, browser):
    """The default settings allow only the browsers' push services over https."""
    for endpoint in ("http://127.0.0.1:8000/push/1", "http://localhost/",
                     "http://fcm.googleapis.com/fcm/send/x"):
        response = client.post("/api/user/push-subscriptions",
                               json=browser(endpoint).subscription(), headers=auth())
        assert response.status_code == 422, endpoint
        assert response.get_json()["errors"][0].startswith("endpoint:")
    ok = client.post("/api/user/push-subscriptions", headers=auth(),
                     json=browser("https://fcm.googleapis.com/fcm/send/abc").subscription())
    assert ok.status_code == 201
    windows = client.post("/api/user/push-subscriptions", headers=auth(), json=browser(
        "https://db5p.notify.windows.com/w/?token=abc").subscription())
    assert windows.status_code == 201


def test_keys_must_be_a_p256_point_and_a_16_byte_secret(push_client, auth, browser,
                                                        push_service):
    good = browser(push_service.endpoint("k")).subscription()
    not_on_curve = base64.urlsafe_b64encode(b"\x04" + b"\x01" * 64).rstrip(b"=").decode()
    cases = [
        ({"p256dh": good["keys"]["p256dh"][:-4]}, "keys.p256dh:"),
        ({"p256dh": not_on_curve}, "keys.p256dh:"),
        ({"p256dh": "%%% not base64 %%%"}, "keys.p256dh:"),
        ({"auth": base64.urlsafe_b64encode(os.urandom(15)).decode()}, "keys.auth:"),
        ({"auth": None}, "keys.auth:"),
    ]
    for change, field in cases:
        body = {**good, "keys": {**good["keys"], **change}}
        response = push_client.post("/api/user/push-subscriptions", json=body, headers=auth())
        assert response.status_code == 422, change
        assert any(e.startswith(field) for e in response.get_json()["errors"]), \
            response.get_json()["errors"]


# ---- preferences --------------------------------------------------------------------------------

def test_reminders_are_off_until_set_and_change_field_by_field(client, auth):
    headers = auth()
    data = client.get("/api/user/reminders", headers=headers).get_json()["data"]
    assert data == {"enabled": False, "time": "smart", "smart_time": "21:00",
                    "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                    "quiet_start": None, "quiet_end": None, "weekly_recap": True}
    data = _set_reminders(client, headers, enabled=True, time="07:30", days=["sat", "mon"],
                          quiet_start="22:00", quiet_end="06:30")
    assert (data["enabled"], data["time"], data["days"]) == (True, "07:30", ["mon", "sat"])
    assert (data["quiet_start"], data["quiet_end"]) == ("22:00", "06:30")
    data = _set_reminders(client, headers, weekly_recap=False)
    assert data["time"] == "07:30" and data["weekly_recap"] is False
    data = _set_reminders(client, headers, quiet_start=None, quiet_end=None)
    assert data["quiet_start"] is None and data["time"] == "07:30"
    assert client.get("/api/user/reminders", headers=headers).get_json()["data"] == data


@pytest.mark.parametrize("body, field", [
    ({"time": "24:00"}, "time"),
    ({"time": "7:30"}, "time"),
    ({"time": "later"}, "time"),
    ({"days": ["monday"]}, "days"),
    ({"days": ["mon", "mon"]}, "days"),
    ({"quiet_start": "22:00"}, "quiet_end"),
    ({"quiet_start": "22:00", "quiet_end": "22:00"}, "quiet_end"),
    ({"quiet_start": "22:00", "quiet_end": None}, "quiet_end"),
    ({"enabled": "yes please"}, "enabled"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_preferences_are_422_naming_the_field(client, auth, body, field):
    response = client.put("/api/user/reminders", json=body, headers=auth())
    assert response.status_code == 422
    assert any(e.startswith(f"{field}") for e in response.get_json()["errors"]), \
        response.get_json()["errors"]


# ---- who is due, in each user's own time ------------------------------------------------

def test_due_at_the_users_local_time_in_auckland_and_los_angeles(
        push_client, auth, push_service, browser, make_user):
    _listener(push_client, auth, push_service, browser, "kiwi@example.com",
              make_user=make_user, timezone="Pacific/Auckland", time="08:00")
    _listener(push_client, auth, push_service, browser, "angeleno@example.com",
              make_user=make_user, timezone="America/Los_Angeles", time="21:00")
    app = push_client.application
    # 2026-01-14 18:59 UTC is 07:59 on the 15th in Auckland (NZDT, +13): nobody yet.
    assert _claimed(app, datetime(2026, 1, 14, 18, 59, tzinfo=UTC)) == []
    kiwi = _claimed(app, datetime(2026, 1, 14, 19, 0, tzinfo=UTC))
    assert [day for _, day in kiwi] == [date(2026, 1, 15)]
    # 2026-01-15 05:00 UTC is 21:00 on the 14th in Los Angeles (PST, -8).
    angeleno = _claimed(app, datetime(2026, 1, 15, 5, 0, tzinfo=UTC))
    assert [day for _, day in angeleno] == [date(2026, 1, 14)]
    # Within the hour after, nobody twice; the next day, again.
    assert _claimed(app, datetime(2026, 1, 15, 5, 30, tzinfo=UTC)) == []
    assert _claimed(app, datetime(2026, 1, 14, 19, 40, tzinfo=UTC)) == []
    assert [d for _, d in _claimed(app, datetime(2026, 1, 15, 19, 1, tzinfo=UTC))] == \
        [date(2026, 1, 16)]


def test_the_local_time_holds_across_a_dst_change(push_client, auth, push_service, browser,
                                                  make_user):
    """Los Angeles springs forward on 2026-03-08: 09:00 is 17:00 UTC before, 16:00 after; a
    time the jump skips (02:30) is sent at the first minute after it."""
    _listener(push_client, auth, push_service, browser, "morning@example.com",
              make_user=make_user, timezone="America/Los_Angeles", time="09:00")
    _listener(push_client, auth, push_service, browser, "skipped@example.com",
              make_user=make_user, timezone="America/Los_Angeles", time="02:30")
    app = push_client.application
    assert _claimed(app, datetime(2026, 3, 7, 16, 0, tzinfo=UTC)) == []  # 08:00 PST
    assert [d for _, d in _claimed(app, datetime(2026, 3, 7, 17, 0, tzinfo=UTC))] == \
        [date(2026, 3, 7)]
    # 2026-03-08 10:00 UTC is 03:00 PDT: 02:30 never happened that night.
    assert [d for _, d in _claimed(app, datetime(2026, 3, 8, 10, 0, tzinfo=UTC))] == \
        [date(2026, 3, 8)]
    assert _claimed(app, datetime(2026, 3, 9, 15, 59, tzinfo=UTC)) == []
    assert [d for _, d in _claimed(app, datetime(2026, 3, 9, 16, 0, tzinfo=UTC))] == \
        [date(2026, 3, 9)]


def test_a_reminder_time_the_spring_forward_skips_is_sent_at_the_first_minute_after_it(
        push_client, auth, push_service, browser, make_user):
    """Los Angeles springs forward from 01:59 to 03:00 on 2026-03-08: a reminder at 02:00 is
    sent at 03:00 (it was never sent that day), and one at 01:30 missed by a worker that was
    down is still caught up within the real hour after it (03:00 is 30 minutes later)."""
    app = push_client.application
    _listener(push_client, auth, push_service, browser, "two@example.com",
              make_user=make_user, timezone="America/Los_Angeles", time="02:00")
    assert _claimed(app, datetime(2026, 3, 8, 9, 59, tzinfo=UTC)) == []  # 01:59 PST
    assert [d for _, d in _claimed(app, datetime(2026, 3, 8, 10, 0, tzinfo=UTC))] == \
        [date(2026, 3, 8)]  # 03:00 PDT
    _listener(push_client, auth, push_service, browser, "half@example.com",
              make_user=make_user, timezone="America/Los_Angeles", time="01:30")
    assert [d for _, d in _claimed(app, datetime(2026, 3, 8, 10, 0, tzinfo=UTC))] == \
        [date(2026, 3, 8)]
    # the catch-up is an hour of real time, the spring-forward is not more of it
    _listener(push_client, auth, push_service, browser, "late@example.com",
              make_user=make_user, timezone="America/Los_Angeles", time="01:00")
    assert _claimed(app, datetime(2026, 3, 8, 10, 0, tzinfo=UTC)) == []
    assert reminder_claims.reminder_due(180, 0, 120, 127, 7, None, None, 60)  # SQLite's rule


def test_a_reminder_time_the_fall_back_repeats_is_sent_once(push_client, auth, push_service,
                                                            browser, make_user):
    """Los Angeles falls back from 01:59 PDT to 01:00 PST on 2026-11-01: 01:30 comes twice
    that night, the reminder once (the day's first 01:30); the next night's as usual."""
    app = push_client.application
    _listener(push_client, auth, push_service, browser, "twice@example.com",
              make_user=make_user, timezone="America/Los_Angeles", time="01:30")
    assert [d for _, d in _claimed(app, datetime(2026, 11, 1, 8, 30, tzinfo=UTC))] == \
        [date(2026, 11, 1)]  # 01:30 PDT
    assert _claimed(app, datetime(2026, 11, 1, 9, 30, tzinfo=UTC)) == []  # 01:30 PST
    assert _claimed(app, datetime(2026, 11, 1, 9, 45, tzinfo=UTC)) == []
    assert [d for _, d in _claimed(app, datetime(2026, 11, 2, 9, 30, tzinfo=UTC))] == \
        [date(2026, 11, 2)]


def _pushes_at(app, set_clock, push_service, device, moments) -> list[tuple[datetime, str]]:
    """Scan and send at each moment in turn; the moments at which a reminder reached the
    device, with the user day it was for."""
    arrived = []
    for moment in moments:
        set_clock(moment)
        before = len(push_service.posts_to(device.endpoint))
        _scan_and_work(app)
        arrived += [(moment, device.decrypt(post.body)["day"])
                    for post in push_service.posts_to(device.endpoint)[before:]]
    return arrived


@pytest.mark.parametrize("zone, start_hour, at, jump, skipped_day", [
    # New York springs forward from 01:59 EST to 03:00 EDT on 2026-03-08; a day that starts
    # at 03:00 ends in the jump, and its 02:30 never comes
    ("America/New_York", 3, "02:30", datetime(2026, 3, 8, 7, 0, tzinfo=UTC), "2026-03-07"),
    ("America/New_York", 3, "02:00", datetime(2026, 3, 8, 7, 0, tzinfo=UTC), "2026-03-07"),
    # Chatham (+12:45) jumps from 02:44 to 03:45 on 2026-09-27: a 03:00 day start inside it
    ("Pacific/Chatham", 3, "02:50", datetime(2026, 9, 26, 14, 0, tzinfo=UTC), "2026-09-26"),
    # Santiago skips midnight (00:00 -> 01:00) on 2026-09-06; a day that starts at 01:00
    ("America/Santiago", 1, "00:30", datetime(2026, 9, 6, 4, 0, tzinfo=UTC), "2026-09-05"),
    # the plain cases: the skipped time belongs to the day after the jump
    ("America/New_York", 0, "02:30", datetime(2026, 3, 8, 7, 0, tzinfo=UTC), "2026-03-08"),
    ("America/New_York", 2, "02:30", datetime(2026, 3, 8, 7, 0, tzinfo=UTC), "2026-03-08"),
    # Lord Howe moves half an hour, 02:00 -> 02:30, on 2026-10-04
    ("Australia/Lord_Howe", 0, "02:15", datetime(2026, 10, 3, 15, 30, tzinfo=UTC),
     "2026-10-04"),
])
def test_a_reminder_time_the_spring_forward_skips_is_sent_once_at_the_end_of_the_jump(
        push_client, auth, push_service, browser, make_user, set_clock, zone, start_hour, at,
        jump, skipped_day):
    """A daily reminder whose local time the clock jumps over is sent once, at the first
    local minute after the jump, for the user day it belongs to; also when that day, started
    late (``day_start_hour``), ended inside the jump: that day's reminder is not lost."""
    app = push_client.application
    _, device = _listener(push_client, auth, push_service, browser, "jump@example.com",
                          make_user=make_user, timezone=zone, day_start_hour=start_hour,
                          time=at)
    minute = timedelta(minutes=1)
    arrived = _pushes_at(app, set_clock, push_service, device, [
        jump - 2 * minute, jump - minute, jump, jump + minute, jump + 30 * minute,
        jump + 59 * minute, jump + 60 * minute, jump + 61 * minute])
    assert arrived == [(jump, skipped_day)]


@pytest.mark.parametrize("zone, start_hour, at, first, again", [
    # New York falls back from 01:59 EDT to 01:00 EST on 2026-11-01: 01:30 comes twice
    ("America/New_York", 0, "01:30", datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
     datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
    ("America/New_York", 1, "01:30", datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
     datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
    # Chatham goes back from 03:44 to 02:45 on 2026-04-05; with the day starting at 03:00, the
    # user day goes back with the clock
    ("Pacific/Chatham", 3, "02:50", datetime(2026, 4, 4, 13, 5, tzinfo=UTC),
     datetime(2026, 4, 4, 14, 5, tzinfo=UTC)),
    ("Pacific/Chatham", 3, "03:10", datetime(2026, 4, 4, 13, 25, tzinfo=UTC),
     datetime(2026, 4, 4, 14, 25, tzinfo=UTC)),
    # Lord Howe goes back half an hour, 01:59 -> 01:30, on 2026-04-05
    ("Australia/Lord_Howe", 0, "01:45", datetime(2026, 4, 4, 14, 45, tzinfo=UTC),
     datetime(2026, 4, 4, 15, 15, tzinfo=UTC)),
])
def test_a_reminder_time_the_fall_back_repeats_is_sent_once_whatever_the_zone(
        push_client, auth, push_service, browser, make_user, set_clock, zone, start_hour, at,
        first, again):
    """A reminder time inside the repeated hour is sent at its first occurrence only."""
    app = push_client.application
    _, device = _listener(push_client, auth, push_service, browser, "back@example.com",
                          make_user=make_user, timezone=zone, day_start_hour=start_hour,
                          time=at)
    minute = timedelta(minutes=1)
    arrived = _pushes_at(app, set_clock, push_service, device, [
        first - minute, first, first + minute, again - minute, again, again + minute,
        again + 30 * minute])
    assert [moment for moment, _day in arrived] == [first]


@pytest.mark.parametrize("zone, local_date", [
    ("America/New_York", date(2026, 3, 8)), ("America/New_York", date(2026, 11, 1)),
    ("Pacific/Chatham", date(2026, 9, 27)), ("Pacific/Chatham", date(2026, 4, 5)),
    ("Australia/Lord_Howe", date(2026, 10, 4)), ("Australia/Lord_Howe", date(2026, 4, 5)),
    ("America/Santiago", date(2026, 9, 6)),
])
def test_every_reminder_time_and_day_start_is_due_once_a_day_across_a_dst_change(
        zone, local_date):
    """The rule SQLite runs (the same as ``CLAIM_DUE_SQL``), minute by minute over the days
    around a DST change, for every day start and the night's quarter hours: each user day's reminder
    first comes due at its local time's first occurrence, or at the first minute after a
    jump that skipped it, and for no other day."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    start = datetime.combine(local_date - timedelta(days=1), datetime.min.time(), tz)
    minutes = [start.astimezone(UTC) + timedelta(minutes=n) for n in range(3 * 1440)]
    clocks = [reminder_clocks.zone_clock(tz, moment) for moment in minutes]
    for start_hour in range(7):
        days = [clock.local_day(moment, zone, start_hour) for moment in minutes]
        for at in [*range(0, 7 * 60, 15), 12 * 60, 21 * 60, 23 * 60 + 45]:
            first_due = {}
            for moment, local, today in zip(minutes, clocks, days, strict=True):
                day = reminder_clocks.skipped_reminder_day(local, start_hour, at)
                if reminder_claims.reminder_due(local.wall_minute, start_hour, at, 127,
                                                (day or today).isoweekday(), None, None,
                                                local.skipped, day is not None):
                    first_due.setdefault(day or today, moment)
            for day in (local_date - timedelta(days=1), local_date):
                wall = datetime.combine(day + timedelta(days=at < start_hour * 60),
                                        datetime.min.time()) + timedelta(minutes=at)
                expected = next(m for m in minutes
                                if m.astimezone(tz).replace(tzinfo=None) >= wall)
                assert first_due.get(day) == expected, (start_hour, at, day)


def test_never_in_quiet_hours_nor_on_days_off(push_client, auth, push_service, browser):
    _listener(push_client, auth, push_service, browser, "late@example.com", time="22:15",
              quiet_start="22:00", quiet_end="07:00")
    _listener(push_client, auth, push_service, browser, "early@example.com", time="06:45",
              quiet_start="22:00", quiet_end="07:00")
    _listener(push_client, auth, push_service, browser, "weekdays@example.com", time="12:00",
              days=["mon", "tue", "wed", "thu", "fri"])
    app = push_client.application
    assert _claimed(app, datetime(2026, 1, 14, 22, 15, tzinfo=UTC)) == []  # quiet
    assert _claimed(app, datetime(2026, 1, 14, 23, 0, tzinfo=UTC)) == []
    assert _claimed(app, datetime(2026, 1, 15, 6, 45, tzinfo=UTC)) == []  # quiet
    early = _claimed(app, datetime(2026, 1, 15, 7, 0, tzinfo=UTC))  # quiet hours over
    assert len(early) == 1
    assert _claimed(app, datetime(2026, 1, 17, 12, 0, tzinfo=UTC)) == []  # a Saturday
    assert len(_claimed(app, datetime(2026, 1, 19, 12, 0, tzinfo=UTC))) == 1  # a Monday


def test_not_after_listening_that_day_but_a_refunded_tap_is_no_listening(
        push_client, auth, push_service, browser, make_package, make_session):
    app = push_client.application
    _listener(push_client, auth, push_service, browser, "done@example.com", time="18:00")
    _listener(push_client, auth, push_service, browser, "tapped@example.com", time="18:00")
    with app.app_context():
        ids = dict(db.session.execute(select(ReminderPreferences.user_id,
                                             ReminderPreferences.user_id)).all())
    done, tapped = sorted(ids)
    package = make_package()
    make_session(done, package, date(2026, 1, 14), minutes=3)
    make_session(tapped, package, date(2026, 1, 14), minutes=0.2, counts_toward_quota=False)
    claimed = _claimed(app, datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    assert claimed == [(tapped, date(2026, 1, 14))]


def test_nobody_without_a_subscription_or_with_reminders_off(push_client, auth, push_service,
                                                             browser):
    headers, _ = _listener(push_client, auth, push_service, browser, "off@example.com",
                           time="18:00")
    _set_reminders(push_client, headers, enabled=False)
    other = auth("nodevice@example.com")
    _set_reminders(push_client, other, enabled=True, time="18:00")
    assert _claimed(push_client.application, datetime(2026, 1, 14, 18, 0, tzinfo=UTC)) == []


def test_smart_time_is_the_hour_they_usually_start_sessions_they_complete(
        push_client, auth, push_service, browser, make_package, make_session, set_clock,
        make_user):
    app = push_client.application
    headers, _ = _listener(push_client, auth, push_service, browser, "habit@example.com",
                           make_user=make_user, timezone="America/Los_Angeles", time="smart")
    _listener(push_client, auth, push_service, browser, "new@example.com", time="smart")
    with app.app_context():
        habit = db.session.execute(select(func.min(ReminderPreferences.user_id))).scalar()
    package = make_package()
    for day in (5, 6, 7):  # 07:10 PST = 15:10 UTC
        make_session(habit, package, started_at=datetime(2026, 1, day, 15, 10, tzinfo=UTC),
                     minutes=9)
    make_session(habit, package, started_at=datetime(2026, 1, 8, 5, 0, tzinfo=UTC))  # 21:00
    make_session(habit, package, started_at=datetime(2026, 1, 9, 4, 0, tzinfo=UTC),
                 completed=False)  # 20:00, not completed: does not count
    make_session(habit, package, started_at=datetime(2026, 1, 10, 4, 0, tzinfo=UTC),
                 completed=False)
    set_clock(datetime(2026, 1, 14, 15, 0, tzinfo=UTC))  # 07:00 in Los Angeles
    with app.app_context():
        assert reminders.send_due_reminders() == 1
        rows = db.session.execute(select(ReminderDelivery.user_id)).scalars().all()
        assert rows == [habit]
        db.session.remove()
    data = push_client.get("/api/user/reminders", headers=headers).get_json()["data"]
    assert (data["time"], data["smart_time"]) == ("smart", "07:00")
    # the one without data: 21:00
    assert len(_claimed(app, datetime(2026, 1, 14, 21, 0, tzinfo=UTC))) == 1


def test_smart_time_after_a_move_is_the_hour_they_listened_at_where_they_were(
        push_client, auth, push_service, browser, make_package, make_session, set_clock,
        make_user):
    """Three evenings at 21:00 in Los Angeles, then a move to Auckland: the habit is 21:00
    local, as the recap's listening hours say, not 18:00 (21:00 PST read in Auckland)."""
    app = push_client.application
    headers, _ = _listener(push_client, auth, push_service, browser, "mover@example.com",
                           make_user=make_user, timezone="America/Los_Angeles", time="smart")
    with app.app_context():
        mover = db.session.execute(select(ReminderPreferences.user_id)).scalar_one()
    package = make_package()
    for day in (6, 7, 8):  # 05:00 UTC: 21:00 PST the evening before
        make_session(mover, package, started_at=datetime(2026, 1, day, 5, 0, tzinfo=UTC))
    set_clock(datetime(2026, 1, 10, 12, 0, tzinfo=UTC))
    res = push_client.put("/api/user/profile", json={"timezone": "Pacific/Auckland"},
                          headers=headers)
    assert res.status_code == 200, res.get_json()
    with app.app_context():  # after the move took effect (08:00 UTC on the 11th)
        assert reminder_claims.refresh_smart_times(datetime(2026, 1, 12, 0, 0, tzinfo=UTC)) == 1
        db.session.remove()
    data = push_client.get("/api/user/reminders", headers=headers).get_json()["data"]
    assert data["smart_time"] == "21:00"
    recap = push_client.get("/api/user/recap?period=week&date=2026-01-05",
                            headers=headers).get_json()["data"]
    assert recap["listening_hours"][21] == 30


def test_smart_time_after_two_moves_reads_the_oldest_evenings_where_they_were_then(
        push_client, auth, push_service, browser, make_package, make_session, set_clock,
        make_user):
    """Los Angeles, then London, then Auckland within a fortnight, always listening at 21:00
    local: the smart time is 21:00. The evenings in Los Angeles (before the first move) count
    at 21:00 too, not at 05:00 (21:00 PST read in London, the zone before the last move)."""
    app = push_client.application
    headers, _ = _listener(push_client, auth, push_service, browser, "nomad@example.com",
                           make_user=make_user, timezone="America/Los_Angeles", time="smart")
    with app.app_context():
        nomad = db.session.execute(select(ReminderPreferences.user_id)).scalar_one()
    package = make_package()
    for day in (6, 7, 8):  # 05:00 UTC: 21:00 PST the evening before
        make_session(nomad, package, started_at=datetime(2026, 1, day, 5, 0, tzinfo=UTC))
    set_clock(datetime(2026, 1, 10, 12, 0, tzinfo=UTC))  # to London from 08:00 UTC on the 11th
    res = push_client.put("/api/user/profile", json={"timezone": "Europe/London"},
                          headers=headers)
    assert res.status_code == 200, res.get_json()
    make_session(nomad, package, started_at=datetime(2026, 1, 11, 21, 0, tzinfo=UTC))
    set_clock(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))  # to Auckland from 00:00 UTC the 13th
    res = push_client.put("/api/user/profile", json={"timezone": "Pacific/Auckland"},
                          headers=headers)
    assert res.status_code == 200, res.get_json()
    make_session(nomad, package, started_at=datetime(2026, 1, 13, 8, 0, tzinfo=UTC))  # 21:00
    with app.app_context():
        from sonicus.models import User

        user = db.session.get(User, nomad)  # both moves remembered
        assert [e["timezone"] for e in user.earlier_day_settings] == ["America/Los_Angeles"]
        assert user.prior_timezone == "Europe/London"
        assert reminder_claims.refresh_smart_times(datetime(2026, 1, 14, 0, 0, tzinfo=UTC)) == 1
        db.session.remove()
    data = push_client.get("/api/user/reminders", headers=headers).get_json()["data"]
    assert data["smart_time"] == "21:00"
    with app.app_context():  # the rule written for SQLite says the same
        db.session.execute(update(ReminderPreferences).values(smart_minute=None,
                                                              smart_computed_at=None))
        moment = datetime(2026, 1, 14, 0, 0, tzinfo=UTC)
        reminder_claims._refresh_smart_times_python(
            moment, datetime(2025, 10, 1, tzinfo=UTC), moment, 10)
        assert db.session.get(ReminderPreferences, nomad).smart_minute == 21 * 60
        db.session.rollback()


def test_smart_time_reads_evenings_before_a_move_of_more_than_fifteen_days_ago(
        push_client, auth, push_service, browser, make_package, make_session, set_clock,
        make_user):
    """Three evenings at 21:00 in Los Angeles, a move to London, two evenings at 21:00 there,
    and 26 days after the move a later day start: the smart time stays 21:00. The Los Angeles
    zone is remembered as long as the smart time looks back (90 days): forgotten after 15,
    those evenings read at 05:00 (London) and outnumbered the London ones."""
    app = push_client.application
    headers, _ = _listener(push_client, auth, push_service, browser, "mover@example.com",
                           make_user=make_user, timezone="America/Los_Angeles", time="smart")
    with app.app_context():
        mover = db.session.execute(select(ReminderPreferences.user_id)).scalar_one()
    package = make_package()
    for day in (6, 7, 8):  # 05:00 UTC: 21:00 PST the evening before
        make_session(mover, package, started_at=datetime(2026, 1, day, 5, 0, tzinfo=UTC))
    set_clock(datetime(2026, 1, 10, 12, 0, tzinfo=UTC))  # to London from 08:00 UTC on the 11th
    res = push_client.put("/api/user/profile", json={"timezone": "Europe/London"},
                          headers=headers)
    assert res.status_code == 200, res.get_json()
    for day in (12, 13):
        make_session(mover, package, started_at=datetime(2026, 1, day, 21, 0, tzinfo=UTC))
    set_clock(datetime(2026, 2, 6, 12, 0, tzinfo=UTC))
    res = push_client.put("/api/user/profile", json={"day_start_hour": 2}, headers=headers)
    assert res.status_code == 200, res.get_json()
    moment = datetime(2026, 2, 8, 0, 0, tzinfo=UTC)
    with app.app_context():
        assert reminder_claims.refresh_smart_times(moment) == 1
        db.session.remove()
    data = push_client.get("/api/user/reminders", headers=headers).get_json()["data"]
    assert data["smart_time"] == "21:00"
    with app.app_context():  # the rule written for SQLite says the same
        db.session.execute(update(ReminderPreferences).values(smart_minute=None,
                                                              smart_computed_at=None))
        reminder_claims._refresh_smart_times_python(
            moment, moment - timedelta(days=reminder_claims.SMART_LOOKBACK_DAYS), moment, 10)
        assert db.session.get(ReminderPreferences, mover).smart_minute == 21 * 60
        db.session.rollback()


# ---- sending ------------------------------------------------------------------------------------

def test_the_reminder_arrives_encrypted_and_signed_and_a_gone_device_is_removed(
        push_client, auth, push_service, browser, set_clock):
    app = push_client.application
    headers, phone = _listener(push_client, auth, push_service, browser, time="18:00")
    laptop = browser(push_service.endpoint("old-laptop"))
    _subscribe(push_client, headers, laptop)
    push_service.answer(laptop.endpoint, 410)
    key = push_client.get("/api/push/vapid-public-key").get_json()["data"]["public_key"]

    set_clock(datetime(2026, 1, 14, 18, 2, tzinfo=UTC))
    with app.app_context():
        assert reminders.send_due_reminders() == 1
    _run_jobs(app)

    [post] = push_service.posts_to(phone.endpoint)
    assert post.vapid_error is None and post.status == 201
    assert post.vapid_key == key
    assert post.claims["aud"] == push_service.base
    assert post.headers["content-encoding"] == "aes128gcm"
    assert int(post.headers["ttl"]) > 0
    message = phone.decrypt(post.body)
    assert message["title"] and message["body"]
    assert (message["url"], message["tag"], message["day"]) == \
        ("/?from=reminder", "sonicus-reminder", "2026-01-14")
    assert "streak" not in message["body"]
    [gone] = push_service.posts_to(laptop.endpoint)
    assert gone.status == 410
    with app.app_context():
        endpoints = db.session.execute(select(PushSubscription.endpoint)).scalars().all()
        assert endpoints == [phone.endpoint]
        delivery = db.session.execute(select(ReminderDelivery)).scalar_one()
        assert delivery.pushes_sent == 1 and delivery.local_day == date(2026, 1, 14)
        # the same day again: nothing more
        set_clock(datetime(2026, 1, 14, 18, 30, tzinfo=UTC))
        assert reminders.send_due_reminders() == 0
    _run_jobs(app)
    assert len(push_service.posts_to(phone.endpoint)) == 1


def test_the_streak_shows_only_when_the_user_shows_streaks(
        push_client, auth, push_service, browser, set_clock, make_package, make_session):
    app = push_client.application
    shown_headers, shown = _listener(push_client, auth, push_service, browser,
                                     "shown@example.com", time="18:00")
    hidden_headers, hidden = _listener(push_client, auth, push_service, browser,
                                       "hidden@example.com", time="18:00")
    assert push_client.put("/api/user/profile", json={"preferences": {"show_streaks": False}},
                           headers=hidden_headers).status_code == 200
    package = make_package()
    with app.app_context():
        users = sorted(db.session.execute(select(ReminderPreferences.user_id)).scalars())
    for user in users:
        for day in (11, 12, 13):
            make_session(user, package, date(2026, 1, day), minutes=10)
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    with app.app_context():
        assert reminders.send_due_reminders() == 2
    _run_jobs(app)
    shown_body = shown.decrypt(push_service.posts_to(shown.endpoint)[0].body)["body"]
    hidden_body = hidden.decrypt(push_service.posts_to(hidden.endpoint)[0].body)["body"]
    assert "3-day streak" in shown_body
    assert "streak" not in hidden_body and "3" not in hidden_body


def test_a_busy_push_service_is_retried_then_given_up(push_client, auth, push_service, browser,
                                                      set_clock, wait_for):
    """503 → retried at once (first delay 0 s); 429 with Retry-After: 1 → retried a second
    later through RQ's scheduler; after the configured delays (2) the push is given up."""
    app = push_client.application
    _, busy = _listener(push_client, auth, push_service, browser, "busy@example.com",
                        time="18:00")
    _, limited = _listener(push_client, auth, push_service, browser, "limited@example.com",
                           time="18:00")
    _, down = _listener(push_client, auth, push_service, browser, "down@example.com",
                        time="18:00")
    push_service.answer(busy.endpoint, 503)
    push_service.answer(limited.endpoint, 429, headers={"Retry-After": "1"})
    push_service.answer(down.endpoint, 503, 503, 503, 503)
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    with app.app_context():
        assert reminders.send_due_reminders() == 3

    def settled():
        _run_jobs(app)
        return (len(push_service.posts_to(limited.endpoint)) == 2
                and len(push_service.posts_to(down.endpoint)) == 3)

    wait_for(settled, timeout=15, interval=0.2)
    assert [p.status for p in push_service.posts_to(busy.endpoint)] == [503, 201]
    assert [p.status for p in push_service.posts_to(limited.endpoint)] == [429, 201]
    assert [p.status for p in push_service.posts_to(down.endpoint)] == [503, 503, 503]
    assert busy.decrypt(push_service.posts_to(busy.endpoint)[1].body)["tag"] == \
        "sonicus-reminder"
    _run_jobs(app)
    assert len(push_service.posts_to(down.endpoint)) == 3  # bounded
    with app.app_context():  # a busy service is no reason to forget the device
        assert db.session.execute(select(func.count(PushSubscription.id))).scalar() == 3


def test_a_reminder_is_not_sent_after_the_user_listened_or_turned_reminders_off(
        push_client, auth, push_service, browser, set_clock, make_package, make_session):
    """Claimed at 18:00, sent later (a busy queue, a retry up to an hour on): the user who
    listened since, and the one who turned reminders off, get nothing."""
    app = push_client.application
    _, listener = _listener(push_client, auth, push_service, browser, "did@example.com",
                            time="18:00")
    off_headers, off = _listener(push_client, auth, push_service, browser,
                                 "off@example.com", time="18:00")
    _, waiting = _listener(push_client, auth, push_service, browser, "wait@example.com",
                           time="18:00")
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    claimed = _claimed(app, datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    assert len(claimed) == 3
    with app.app_context():
        ids = list(db.session.execute(select(ReminderDelivery.id)
                                      .order_by(ReminderDelivery.user_id)).scalars())
        db.session.remove()
    make_session(min(user for user, _ in claimed), make_package(), date(2026, 1, 14),
                 minutes=5)
    _set_reminders(push_client, off_headers, enabled=False)
    set_clock(datetime(2026, 1, 14, 18, 10, tzinfo=UTC))
    with app.app_context():
        assert reminders.deliver_reminders(ids) == 1
    assert push_service.posts_to(listener.endpoint) == []
    assert push_service.posts_to(off.endpoint) == []
    assert len(push_service.posts_to(waiting.endpoint)) == 1


def test_a_reminder_whose_user_day_is_over_is_not_sent_the_next_day(
        push_client, auth, push_service, browser, set_clock, make_user):
    """Claimed at 03:30 near the end of a user day that starts at 04:00, its sending delayed
    (a busy queue, a retry up to an hour on) past 04:00: the day it was for is over, so it is
    not sent during the next one (which has its own reminder)."""
    app = push_client.application
    headers = auth("late@example.com")
    make_user("late@example.com", timezone="Europe/Berlin", day_start_hour=4)
    device = browser(push_service.endpoint("late"))
    _subscribe(push_client, headers, device)
    _set_reminders(push_client, headers, enabled=True, time="03:30")
    claim_at = set_clock(datetime(2026, 1, 14, 2, 30, tzinfo=UTC))  # 03:30 in Berlin
    assert [day for _user, day in _claimed(app, claim_at)] == [date(2026, 1, 13)]
    with app.app_context():
        ids = list(db.session.execute(select(ReminderDelivery.id)).scalars())
        db.session.remove()
    set_clock(datetime(2026, 1, 14, 3, 5, tzinfo=UTC))  # 04:05: the 14th has begun
    with app.app_context():
        assert reminders.deliver_reminders(ids) == 0
        db.session.remove()
    assert push_service.posts_to(device.endpoint) == []
    set_clock(datetime(2026, 1, 14, 2, 55, tzinfo=UTC))  # still the 13th (03:55): sent
    with app.app_context():
        assert reminders.deliver_reminders(ids) == 1
        db.session.remove()
    assert len(push_service.posts_to(device.endpoint)) == 1


def test_a_sending_job_run_again_sends_no_reminder_twice(push_client, auth, push_service,
                                                         browser, set_clock):
    """A worker that died after posting has its job run again by another worker: the user
    still gets one push that day (at most one reminder per user day)."""
    app = push_client.application
    _, device = _listener(push_client, auth, push_service, browser, time="18:00")
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    with app.app_context():
        ids = reminder_claims.claim_due_reminders()
        db.session.remove()
    with app.app_context():
        assert reminders.deliver_reminders(ids) == 1
        db.session.remove()
    with app.app_context():
        assert reminders.deliver_reminders(ids) == 0
        db.session.remove()
    assert len(push_service.posts_to(device.endpoint)) == 1


def _lose_sending_jobs(push_app, redis_client, monkeypatch, how):
    """Run the periodic scan with its sending jobs lost: the enqueue failed right after the
    claim (Redis refused it), or Redis restarted empty with the jobs still queued."""
    from sonicus.extensions import redis_gate

    with push_app.app_context():
        if how == "enqueue_failed":
            with monkeypatch.context() as patched:
                patched.setattr(redis_gate(), "allows", lambda: False)
                claimed = reminders.send_due_reminders()
        else:
            claimed = reminders.send_due_reminders()
            redis_client.flushdb()
        db.session.remove()
    return claimed


def _scan_and_work(push_app):
    with push_app.app_context():
        reminders.send_due_reminders()
        db.session.remove()
    _run_jobs(push_app)


@pytest.mark.parametrize("how", ["enqueue_failed", "redis_restarted_empty"])
def test_a_claimed_reminder_whose_job_was_lost_is_sent_by_the_next_scan_within_the_hour(
        push_client, auth, push_service, browser, set_clock, redis_client, monkeypatch, how):
    """The scan claimed the user's day at 18:00 but its sending job never reached a worker:
    a scan after a short grace (a job just queued is not doubled) queues it again, and the
    user gets their reminder, once."""
    app = push_client.application
    _, device = _listener(push_client, auth, push_service, browser, time="18:00")
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    assert _lose_sending_jobs(app, redis_client, monkeypatch, how) == 1
    _run_jobs(app)
    assert push_service.posts_to(device.endpoint) == []
    set_clock(datetime(2026, 1, 14, 18, 1, tzinfo=UTC))  # within the grace: not yet
    _scan_and_work(app)
    assert push_service.posts_to(device.endpoint) == []
    set_clock(datetime(2026, 1, 14, 18, 3, tzinfo=UTC))
    _scan_and_work(app)
    [post] = push_service.posts_to(device.endpoint)
    assert device.decrypt(post.body)["day"] == "2026-01-14"
    for minute in (4, 30):  # sent: never again that day
        set_clock(datetime(2026, 1, 14, 18, minute, tzinfo=UTC))
        _scan_and_work(app)
    assert len(push_service.posts_to(device.endpoint)) == 1
    with app.app_context():
        delivery = db.session.execute(select(ReminderDelivery)).scalar_one()
        assert delivery.pushes_sent == 1 and delivery.sent_at is not None


def test_a_lost_reminder_is_not_sent_past_its_catch_up_hour_nor_in_quiet_hours(
        push_client, auth, push_service, browser, set_clock, redis_client, monkeypatch):
    """Workers down until 18:40 claim three reminders late and their jobs are lost. At 19:00
    the 18:00 one is past its catch-up hour (an hour after its time, however recent its
    claim) and the one whose quiet hours began at 18:50 is inside them: only the 18:30 one,
    still due, is sent."""
    app = push_client.application
    _, early = _listener(push_client, auth, push_service, browser, "early@example.com",
                         time="18:00")
    _, late = _listener(push_client, auth, push_service, browser, "late@example.com",
                        time="18:30")
    _, quiet = _listener(push_client, auth, push_service, browser, "quiet@example.com",
                         time="18:30", quiet_start="18:50", quiet_end="23:00")
    set_clock(datetime(2026, 1, 14, 18, 40, tzinfo=UTC))
    assert _lose_sending_jobs(app, redis_client, monkeypatch, "redis_restarted_empty") == 3
    for moment in (datetime(2026, 1, 14, 19, 0, tzinfo=UTC),
                   datetime(2026, 1, 14, 19, 20, tzinfo=UTC)):
        set_clock(moment)
        _scan_and_work(app)
    assert push_service.posts_to(early.endpoint) == []
    assert push_service.posts_to(quiet.endpoint) == []
    assert len(push_service.posts_to(late.endpoint)) == 1


@pytest.mark.parametrize("before", ["sent", "job_lost"])
def test_reminders_turned_off_and_on_again_within_the_hour_send_no_second_reminder(
        push_client, auth, push_service, browser, set_clock, redis_client, monkeypatch,
        before):
    """The day's reminder was sent at 18:00 (or claimed with its job lost); the user turns
    reminders off and on again inside the catch-up hour, even twice, even with a later time
    that day: the user day stays claimed, so it is sent once that day (the lost one once
    turned back on while still due), never a second time."""
    app = push_client.application
    headers, device = _listener(push_client, auth, push_service, browser, time="18:00")

    def at(minute):
        set_clock(datetime(2026, 1, 14, 18, minute, tzinfo=UTC))

    at(0)
    if before == "sent":
        _scan_and_work(app)
        assert len(push_service.posts_to(device.endpoint)) == 1
    else:
        assert _lose_sending_jobs(app, redis_client, monkeypatch,
                                  "redis_restarted_empty") == 1
        _run_jobs(app)
        assert push_service.posts_to(device.endpoint) == []
    at(1)
    _set_reminders(push_client, headers, enabled=False)
    at(3)
    _scan_and_work(app)  # off: nothing, whatever is claimed
    at(5)
    _set_reminders(push_client, headers, enabled=True)
    for minute in (6, 10):
        at(minute)
        _scan_and_work(app)
    assert len(push_service.posts_to(device.endpoint)) == 1  # the lost one: sent now
    at(12)
    _set_reminders(push_client, headers, enabled=False)
    at(13)
    _set_reminders(push_client, headers, enabled=True, time="18:45")
    for minute in (14, 40, 45, 50):
        at(minute)
        _scan_and_work(app)
    assert len(push_service.posts_to(device.endpoint)) == 1
    with app.app_context():
        delivery = db.session.execute(select(ReminderDelivery)).scalar_one()
        assert delivery.local_day == date(2026, 1, 14)
        assert delivery.pushes_sent == 1 and delivery.sent_at is not None
        db.session.remove()
    set_clock(datetime(2026, 1, 15, 18, 46, tzinfo=UTC))  # the next day: its own reminder
    _scan_and_work(app)
    assert len(push_service.posts_to(device.endpoint)) == 2


def test_a_reminder_queued_again_and_its_late_original_running_at_once_send_one_push(
        push_client, auth, push_service, browser, set_clock):
    """The original sending job was only late (a queue backlog past the grace): the scan
    queues the reminder again, and two workers run both jobs at the same moment. The first
    to take the reminder sends it; the user gets one push."""
    from sonicus.tasks.queue import QUEUE_DEFAULT, get_queue

    app = push_client.application
    _, device = _listener(push_client, auth, push_service, browser, time="18:00")
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    with app.app_context():
        assert reminders.send_due_reminders() == 1
        db.session.remove()
    set_clock(datetime(2026, 1, 14, 18, 3, tzinfo=UTC))
    with app.app_context():
        assert reminders.send_due_reminders() == 0
        jobs = get_queue(QUEUE_DEFAULT).jobs
        delivery_id = db.session.execute(select(ReminderDelivery.id)).scalar_one()
        db.session.remove()
    sending = [job for job in jobs if job.func is reminders.deliver_reminders]
    assert [job.args for job in sending] == [([delivery_id],), ([delivery_id],)]
    start, sent, errors = threading.Barrier(len(sending)), [], []

    def work(job):
        try:
            with app.app_context():
                start.wait(5)
                sent.append(job.func(*job.args))
                db.session.remove()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(job,)) for job in sending]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == [] and sorted(sent) == [0, 1]
    _run_jobs(app)  # the queued jobs themselves: nothing more
    assert len(push_service.posts_to(device.endpoint)) == 1
    with app.app_context():
        assert db.session.execute(select(ReminderDelivery.pushes_sent)).scalar_one() == 1


def test_two_workers_racing_send_one_push(push_client, auth, push_service, browser, set_clock):
    app = push_client.application
    _, device = _listener(push_client, auth, push_service, browser, time="18:00")
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    start, counts, errors = threading.Barrier(4), [], []

    def scan():
        try:
            with app.app_context():
                start.wait(5)
                counts.append(reminders.send_due_reminders())
                db.session.remove()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=scan) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == [] and sorted(counts) == [0, 0, 0, 1]
    _run_jobs(app)
    _run_jobs(app)
    assert len(push_service.posts_to(device.endpoint)) == 1


def test_the_server_posts_only_to_allowed_addresses_at_send_time_and_follows_no_redirect(
        app, push_client, auth, push_service, browser, set_clock):
    """A subscription stored while its address was allowed is not posted to once the
    settings no longer allow it; a push service's redirect is not followed."""
    _, device = _listener(push_client, auth, push_service, browser, "moved@example.com",
                          time="18:00")
    _, redirected = _listener(push_client, auth, push_service, browser, "hop@example.com",
                              time="18:00")
    push_service.answer(redirected.endpoint, 307,
                        headers={"Location": push_service.endpoint("elsewhere")})
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    with push_client.application.app_context():
        ids = reminder_claims.claim_due_reminders()
        db.session.remove()
    with app.app_context():  # the default settings: only the browsers' push services
        assert reminders.deliver_reminders(ids) == 0
    assert push_service.received == []
    with push_client.application.app_context():  # the same reminders, not yet taken
        db.session.execute(update(ReminderDelivery).values(sent_at=None))
        db.session.commit()
        assert reminders.deliver_reminders(ids) == 1
    assert [p.status for p in push_service.posts_to(redirected.endpoint)] == [307]
    assert push_service.posts_to(push_service.endpoint("elsewhere")) == []
    assert len(push_service.posts_to(device.endpoint)) == 1


def test_mondays_first_push_carries_last_weeks_recap(
        push_client, auth, push_service, browser, set_clock, make_package, make_session):
    app = push_client.application
    _, weekly = _listener(push_client, auth, push_service, browser, "weekly@example.com",
                          time="18:00")
    plain_headers, plain = _listener(push_client, auth, push_service, browser,
                                     "plain@example.com", time="18:00")
    _set_reminders(push_client, plain_headers, weekly_recap=False)
    package = make_package()
    with app.app_context():
        users = sorted(db.session.execute(select(ReminderPreferences.user_id)).scalars())
    for user in users:  # Monday 5, Tuesday 6 and Thursday 8 January 2026
        for day, minutes in ((5, 10), (6, 20), (8, 15)):
            make_session(user, package, date(2026, 1, day), minutes=minutes)
    set_clock(datetime(2026, 1, 12, 18, 0, tzinfo=UTC))  # Monday
    with app.app_context():
        assert reminders.send_due_reminders() == 2
    _run_jobs(app)
    recap = weekly.decrypt(push_service.posts_to(weekly.endpoint)[0].body)
    assert recap["tag"] == "sonicus-weekly-recap"
    assert recap["body"].startswith("Last week: 45 min in 3 sessions over 3 days.")
    assert recap["url"] == "/recap?period=week&date=2026-01-05"
    assert recap["recap"]["from"] == "2026-01-05" and recap["recap"]["minutes"] == 45
    assert plain.decrypt(push_service.posts_to(plain.endpoint)[0].body)["tag"] == \
        "sonicus-reminder"
    # Tuesday: the plain reminder for everyone
    set_clock(datetime(2026, 1, 13, 18, 0, tzinfo=UTC))
    with app.app_context():
        assert reminders.send_due_reminders() == 2
    _run_jobs(app)
    assert weekly.decrypt(push_service.posts_to(weekly.endpoint)[1].body)["tag"] == \
        "sonicus-reminder"


def test_a_monday_after_an_empty_week_gets_the_plain_reminder_not_a_recap_of_nothing(
        push_client, auth, push_service, browser, set_clock, make_package, make_session):
    app = push_client.application
    _, weekly = _listener(push_client, auth, push_service, browser, "quiet@example.com",
                          time="18:00")
    with app.app_context():
        user = db.session.execute(select(ReminderPreferences.user_id)).scalar_one()
    make_session(user, make_package(), date(2025, 12, 30), minutes=10)  # the week before
    set_clock(datetime(2026, 1, 12, 18, 0, tzinfo=UTC))  # Monday after an empty week
    with app.app_context():
        assert reminders.send_due_reminders() == 1
    _run_jobs(app)
    push = weekly.decrypt(push_service.posts_to(weekly.endpoint)[0].body)
    assert push["tag"] == "sonicus-reminder" and "recap" not in push, push


def test_the_export_shows_reminders_and_erasure_forgets_the_devices(push_client, auth,
                                                                    push_service, browser):
    headers, device = _listener(push_client, auth, push_service, browser, time="07:15")
    export = push_client.get("/api/user/export", headers=headers).get_json()["data"]
    assert export["reminder_preferences"]["time"] == "07:15"
    assert [s["endpoint"] for s in export["push_subscriptions"]] == [device.endpoint]
    assert push_client.delete("/api/user/profile", headers=headers).status_code == 200
    with push_client.application.app_context():
        for model in (PushSubscription, ReminderPreferences, ReminderDelivery):
            assert db.session.execute(select(func.count()).select_from(model)).scalar() == 0


def test_development_on_sqlite_finds_the_due_users_too(make_config, tmp_path, auth, browser):
    """``make dev`` runs on SQLite: the same rule, in Python."""
    from flask_migrate import upgrade

    dev = create_app(make_config(DATABASE_URL=f"sqlite:///{tmp_path / 'dev.db'}",
                                 REDIS_URL=None, VAPID_PRIVATE_KEY=None,
                                 INSTANCE_PATH=str(tmp_path)))
    with dev.app_context():
        upgrade()
    client, headers = dev.test_client(), auth("dev@example.com")
    device = browser("https://fcm.googleapis.com/fcm/send/dev")
    assert client.post("/api/user/push-subscriptions", json=device.subscription(),
                       headers=headers).status_code == 201
    assert client.post("/api/user/push-subscriptions", json=device.subscription(),
                       headers=headers).status_code == 200
    _set_reminders(client, headers, enabled=True, time="smart", quiet_start="23:00",
                   quiet_end="06:00")
    with dev.app_context():
        assert reminder_claims.refresh_smart_times(datetime(2026, 1, 14, 20, 0, tzinfo=UTC)) == 1
        assert reminder_claims.claim_due_reminders(datetime(2026, 1, 14, 20, 59, tzinfo=UTC)) == []
        claimed = reminder_claims.claim_due_reminders(datetime(2026, 1, 14, 21, 0, tzinfo=UTC))
        assert len(claimed) == 1
        assert reminder_claims.claim_due_reminders(datetime(2026, 1, 14, 21, 5, tzinfo=UTC)) == []
        # claimed, never sent: found again after the grace, while still due (the SQL's rule)
        again = reminder_claims.scan_due_reminders
        assert again(datetime(2026, 1, 14, 21, 1, tzinfo=UTC)).unsent == []
        assert again(datetime(2026, 1, 14, 21, 2, tzinfo=UTC)).unsent == claimed
        assert again(datetime(2026, 1, 14, 22, 0, tzinfo=UTC)).unsent == []
        db.session.remove()
        db.engine.dispose()


def test_a_browsers_expiration_time_in_milliseconds_is_accepted(push_client, auth, push_service,
                                                                 browser):
    """``PushSubscription.toJSON()`` gives ``expirationTime`` in milliseconds since the epoch:
    a real one is past 2**31 and is kept, not refused by an integer column's range."""
    sub = browser(push_service.endpoint("expiring")).subscription()
    sub["expirationTime"] = 1_796_083_200_000  # 2026-12-01T00:00:00Z
    res = push_client.post("/api/user/push-subscriptions", json=sub, headers=auth())
    assert res.status_code == 201, res.get_json()


@pytest.mark.parametrize("body", [{"time": "09:00\n"},
                                  {"quiet_start": "22:00\n", "quiet_end": "22:00"}])
def test_a_time_with_a_trailing_newline_is_422(client, auth, body):
    """"09:00\n" is not a time (a regex's ``$`` let it through, stored as 09:00; equal quiet
    hours slipped past their own check that way)."""
    res = client.put("/api/user/reminders", json=body, headers=auth())
    assert res.status_code == 422, res.get_json()
    assert client.get("/api/user/reminders", headers=auth()).get_json()["data"]["quiet_start"] \
        is None


@pytest.mark.parametrize("millis", [2 ** 53, 253_402_300_800_000])
def test_an_expiration_time_past_any_date_is_422_naming_it(push_client, auth, push_service,
                                                             browser, millis):
    """An ``expirationTime`` no date can hold (past the year 9999) is refused naming the
    field, and nothing is stored (it was a 500)."""
    sub = browser(push_service.endpoint("far-future")).subscription()
    sub["expirationTime"] = millis
    res = push_client.post("/api/user/push-subscriptions", json=sub, headers=auth())
    assert res.status_code == 422, res.get_json()
    assert any(e.startswith("expirationTime") for e in res.get_json()["errors"])
    with push_client.application.app_context():
        assert db.session.execute(select(func.count(PushSubscription.id))).scalar() == 0


@pytest.mark.parametrize("endpoint", [
    "https://DB5P.notify.windows.com/w/?token=abc",
    "https://db5p.Notify.Windows.COM/w/?token=abc",
    "HTTPS://db5p.notify.windows.com/w/?token=abc",
    "https://FCM.googleapis.com/fcm/send/abc",
    "https://Updates.Push.Services.Mozilla.com/wpush/v2/abc",
    "Https://web.push.APPLE.com/QGx",
])
def test_a_push_host_in_capitals_is_the_same_push_service(client, auth, browser, endpoint):
    """Host names (and the scheme) are case-insensitive: a Windows endpoint written
    ``DB5P.notify.windows.com`` is stored, and the check before a post passes it too."""
    from sonicus.services import webpush

    response = client.post("/api/user/push-subscriptions", headers=auth(),
                           json=browser(endpoint).subscription())
    assert response.status_code == 201, response.get_json()
    with client.application.app_context():
        assert webpush.endpoint_problem(endpoint, webpush.allowed_endpoints()) is None


def test_a_capitalised_host_still_needs_an_allowed_domain_and_path(client, auth, browser):
    """Only the scheme and host fold: a host merely ending in the letters of an allowed one,
    or with an allowed one in front of another domain, is still refused."""
    for endpoint in ("https://DB5P.NOTIFY.WINDOWS.COM.evil.example/w/",
                     "https://EVILnotify.windows.com/w/",
                     "https://FCM.GOOGLEAPIS.COM.evil.example/fcm/send/abc"):
        response = client.post("/api/user/push-subscriptions", headers=auth(),
                               json=browser(endpoint).subscription())
        assert response.status_code == 422, endpoint


@pytest.mark.parametrize("endpoint", [
    "https://fcm.googleapis.com./fcm/send/abc",
    "https://fcm.googleapis.com:443/fcm/send/abc",
    "https://FCM.googleapis.com.:443/fcm/send/abc",
    "https://db5p.notify.windows.com.:443/w/?token=abc",
    "https://web.push.apple.com./QGx",
])
def test_a_push_host_with_a_trailing_dot_or_port_443_is_the_same_push_service(
        client, auth, browser, endpoint):
    """A client library may name the push service fully qualified (``fcm.googleapis.com.``) or
    with https's own port: the same service, so the subscription is stored, in its plain
    spelling (the one posted to), and the check before each post passes both."""
    from sonicus.services import webpush

    response = client.post("/api/user/push-subscriptions", headers=auth(),
                           json=browser(endpoint).subscription())
    assert response.status_code == 201, response.get_json()
    with client.application.app_context():
        stored = db.session.execute(select(PushSubscription.endpoint)).scalar_one()
        assert stored == webpush.normalized_endpoint(endpoint)
        path = endpoint.split("/", 3)[3]  # byte for byte
        assert stored == f"{webpush.push_origin(endpoint)}/{path}"
        assert ".:" not in stored and "./" not in stored and ":443" not in stored
        for spelling in (endpoint, stored):
            assert webpush.endpoint_problem(spelling, webpush.allowed_endpoints()) is None
        db.session.remove()


FCM_ABC = "https://fcm.googleapis.com/fcm/send/abc"
WNS_ABC = "https://db5p.notify.windows.com/w/?token=abc"


@pytest.mark.parametrize("first, second, plain", [
    (FCM_ABC, "https://fcm.googleapis.com.:443/fcm/send/abc", FCM_ABC),
    ("https://fcm.googleapis.com.:443/fcm/send/abc", FCM_ABC, FCM_ABC),
    ("https://fcm.googleapis.com./fcm/send/abc", "https://fcm.googleapis.com:443/fcm/send/abc",
     FCM_ABC),
    (FCM_ABC, "https://FCM.GoogleAPIs.com/fcm/send/abc", FCM_ABC),
    (WNS_ABC, "HTTPS://DB5P.Notify.Windows.com.:443/w/?token=abc", WNS_ABC),
])
def test_one_device_in_two_spellings_of_its_endpoint_is_one_subscription(
        client, auth, browser, first, second, plain):
    """The same device posted again with its push service's host in capitals, fully
    qualified or with :443 (a client library's spelling) is the same subscription: 200 with
    the same id and its keys renewed, one row in the plain spelling; the path keeps its
    letters (``/fcm/send/ABC`` is another device)."""
    me = auth()
    created = client.post("/api/user/push-subscriptions", headers=me,
                          json=browser(first).subscription())
    assert created.status_code == 201, created.get_json()
    renewed = browser(second)
    again = client.post("/api/user/push-subscriptions", headers=me, json=renewed.subscription())
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["data"]["id"] == created.get_json()["data"]["id"]
    with client.application.app_context():
        rows = db.session.execute(select(PushSubscription)).scalars().all()
        assert [(r.endpoint, r.p256dh) for r in rows] == [(plain, renewed.p256dh)]
        db.session.remove()
    other_device = second.replace("/abc", "/ABC").replace("=abc", "=ABC")
    third = client.post("/api/user/push-subscriptions", headers=me,
                        json=browser(other_device).subscription())
    assert third.status_code == 201
    with client.application.app_context():
        assert db.session.execute(select(func.count(PushSubscription.id))).scalar() == 2
        db.session.remove()


def test_a_device_posted_in_two_spellings_gets_one_reminder_signed_for_its_origin(
        push_client, auth, push_service, browser, set_clock):
    """A device subscribed once as ``http://127.0.0.1:<port>/push/phone`` and again as
    ``HTTP://127.0.0.1:<port>/push/phone`` (another account's sign-in on the same browser in
    between) is one device: the reminder reaches it once, posted to the path as given and
    signed for the push service's plain origin."""
    app = push_client.application
    headers, phone = _listener(push_client, auth, push_service, browser, time="18:00")
    shouted = browser("HTTP" + phone.endpoint[len("http"):])
    other = auth("other@example.com")
    assert push_client.post("/api/user/push-subscriptions", json=shouted.subscription(),
                            headers=other).status_code == 201  # moved to the other account
    assert push_client.post("/api/user/push-subscriptions", json=phone.subscription(),
                            headers=headers).status_code == 201  # and back
    _subscribe(push_client, headers, shouted)  # the keys renewed, in capitals
    with app.app_context():
        assert db.session.execute(select(PushSubscription.endpoint)).scalars().all() == [
            phone.endpoint]
        db.session.remove()
    set_clock(datetime(2026, 1, 14, 18, 2, tzinfo=UTC))
    with app.app_context():
        assert reminders.send_due_reminders() == 1
        db.session.remove()
    _run_jobs(app)
    [post] = push_service.posts_to(phone.endpoint)
    assert post.vapid_error is None and post.status == 201
    assert post.claims["aud"] == push_service.base
    assert shouted.decrypt(post.body)["day"] == "2026-01-14"  # the keys posted last


@pytest.mark.parametrize("endpoint", [
    "https://fcm.googleapis.com.evil.test/fcm/send/abc",
    "https://fcm.googleapis.com.evil.test./fcm/send/abc",
    "https://fcm.googleapis.com.evil.test:443/fcm/send/abc",
    "https://evil.test#fcm.googleapis.com/fcm/send/abc",
    "https://evil.test./#https://fcm.googleapis.com/",
    "https://fcm.googleapis.com@evil.test/fcm/send/abc",
    "https://fcm.googleapis.com.@evil.test:443/fcm/send/abc",
    "https://evil.test@fcm.googleapis.com/fcm/send/abc",
    "https://fcm.googleapis.com:8443/fcm/send/abc",
    "https://fcm.googleapis.com.:8443/fcm/send/abc",
    "https://fcm.googleapis.com:80/fcm/send/abc",
    "https://fcm.googleapis.com:0443/fcm/send/abc",
    "https://fcm.googleapis.com:/fcm/send/abc",
    "https://fcm.googleapis.com../fcm/send/abc",
    "http://fcm.googleapis.com:443/fcm/send/abc",
    "https://notify.windows.com./w/",
    "https://evilnotify.windows.com.:443/w/",
    "https://db5p.notify.windows.com.evil.test./w/",
])
def test_a_host_that_only_resembles_a_push_service_after_folding_is_still_422(
        client, auth, browser, endpoint):
    """Only one trailing dot and https's :443 fold away: a host that merely ends with (or
    starts with) an allowed name, credentials, a fragment or another port are refused."""
    response = client.post("/api/user/push-subscriptions", headers=auth(),
                           json=browser(endpoint).subscription())
    assert response.status_code == 422, endpoint
    assert response.get_json()["errors"][0].startswith("endpoint:")


@pytest.mark.parametrize("endpoint", [
    "https://fcm.googleapis.com./fcm/send/abc",
    "https://fcm.googleapis.com:443/fcm/send/abc",
    "https://FCM.GoogleAPIs.com.:443/fcm/send/abc",
])
def test_the_vapid_audience_is_the_push_services_plain_origin(push_app, endpoint):
    """The push service checks ``aud`` against its own origin (RFC 8292): lower case, no
    trailing dot, no default port, whatever spelling the endpoint has."""
    from sonicus.services import webpush
    from tests.push_service import check_vapid

    with push_app.app_context():
        headers = webpush.vapid_signer().headers_for(endpoint)
    claims, _key = check_vapid(headers["Authorization"], "https://fcm.googleapis.com")
    assert claims["aud"] == "https://fcm.googleapis.com"


# ---- an erasure while reminders are on their way ---------------------------------------------

def test_no_reminder_queued_or_due_for_a_retry_is_pushed_after_the_account_is_erased(
        push_client, auth, push_service, browser, set_clock):
    """A reminder claimed and queued, and another whose push service asked to be retried
    (its retry queued), when their users erase their accounts: neither device gets a push
    after."""
    app = push_client.application
    queued_headers, queued = _listener(push_client, auth, push_service, browser,
                                       "queued@example.com", time="18:00")
    retried_headers, retried = _listener(push_client, auth, push_service, browser,
                                         "retried@example.com", time="18:00")
    push_service.answer(retried.endpoint, 503)  # retried through the queue
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    with app.app_context():
        ids = reminder_claims.claim_due_reminders(clock.now())
        db.session.remove()
    assert len(ids) == 2
    with app.app_context():  # the retried one first: its retry is then queued
        retried_id = db.session.execute(select(ReminderDelivery.id).join(
            PushSubscription, PushSubscription.user_id == ReminderDelivery.user_id).where(
            PushSubscription.endpoint == retried.endpoint)).scalar_one()
        reminders.deliver_reminders([retried_id])
        db.session.remove()
    assert [p.status for p in push_service.posts_to(retried.endpoint)] == [503]
    with app.app_context():
        reminders._enqueue_sending([i for i in ids if i != retried_id], "erased-meanwhile")

    for headers in (queued_headers, retried_headers):
        assert push_client.delete("/api/user/profile", headers=headers).status_code == 200
    _run_jobs(app)
    assert push_service.posts_to(queued.endpoint) == []
    assert [p.status for p in push_service.posts_to(retried.endpoint)] == [503]


@pytest.mark.parametrize("paused_in", ["send_many", "send_push"],
                         ids=["read-not-yet-posting", "posting"])
def test_a_reminder_being_sent_as_the_account_is_erased_is_not_pushed_after_the_erasure(
        push_client, auth, push_service, browser, set_clock, db_session, monkeypatch,
        paused_in):
    """The sending job has read the reminder and its devices (or is posting it) when the user
    erases the account (real threads): the push goes out before the erasure answers (which
    waits for a post under way), or not at all, never after the account is gone."""
    from races import in_thread, lock_waiters

    app = push_client.application
    headers, device = _listener(push_client, auth, push_service, browser,
                                "leaving-at-six@example.com", time="18:00")
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    with app.app_context():
        [delivery_id] = reminder_claims.claim_due_reminders(clock.now())
        db.session.remove()
    sending, go = threading.Event(), threading.Event()
    real = getattr(webpush, paused_in)

    def paused(*args, **kwargs):
        sending.set()
        assert go.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(webpush, paused_in, paused)

    def deliver():
        with app.app_context():
            try:
                return reminders.deliver_reminders([delivery_id])
            finally:
                db.session.remove()

    job, _sent = in_thread(deliver)
    erasure = None
    try:
        assert sending.wait(10)
        erasure, answer = in_thread(lambda: app.test_client().delete(
            "/api/user/profile", headers=headers))
        deadline = time.monotonic() + 5
        while erasure.is_alive() and lock_waiters(db_session) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        erased_while_sending = not erasure.is_alive()
    finally:
        go.set()
        job.join(10)
        if erasure is not None:
            erasure.join(10)
    assert answer[0].status_code == 200, answer[0].get_json()
    pushed = push_service.posts_to(device.endpoint)
    assert not (erased_while_sending and pushed), "a push went out after the erasure"
    if paused_in == "send_push":  # the post was under way: the erasure waited for it
        assert not erased_while_sending and len(pushed) == 1
