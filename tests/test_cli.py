"""The users and stats commands, run through Flask's CLI runner against PostgreSQL."""

from __future__ import annotations

import json

import pytest

from sonicus.models import AuditLog, SubscriptionEvent, UserSubscription


def _run(runner, *args):
    return runner.invoke(args=["sonicus", *args])


def _one_line_error(result, text):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and text in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def people(db_session, make_user):
    return {
        "ana": make_user("ana@example.com", name="Ana Lopez", tier="premium"),
        "bob": make_user("bob@example.com", name="Bob", is_active=False),
        "cy": make_user("cy@example.com", name="Cy", tier="pro", status="trialing"),
    }


def test_users_list(runner, people):
    result = _run(runner, "users", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split() == ["ID", "EMAIL", "NAME", "TIER", "STATUS", "ACCOUNT"]
    assert [line.split()[1] for line in lines[1:-1]] == [
        "cy@example.com", "bob@example.com", "ana@example.com"]
    assert "SUSPENDED" in lines[2]
    assert lines[-1] == "1-3 of 3 users."


def test_users_list_filters_and_pages(runner, people):
    result = _run(runner, "users", "list", "--tier", "premium")
    assert "ana@example.com" in result.output and "cy@example.com" not in result.output
    result = _run(runner, "users", "list", "--status", "suspended")
    assert "bob@example.com" in result.output and "1-1 of 1 users." in result.output
    result = _run(runner, "users", "list", "--q", "LOPEZ")
    assert "ana@example.com" in result.output and "1-1 of 1 users." in result.output
    result = _run(runner, "users", "list", "--per-page", "2", "--page", "2")
    assert result.output.strip().splitlines()[-1] == "3-3 of 3 users."
    result = _run(runner, "users", "list", "--q", "nobody")
    assert result.exit_code == 0 and result.output.strip() == "No users found."


def test_users_list_bad_filters(runner, people):
    _one_line_error(_run(runner, "users", "list", "--tier", "gold"), "unknown tier 'gold'")
    _one_line_error(_run(runner, "users", "list", "--status", "asleep"), "unknown status")


def test_users_show(runner, people):
    result = _run(runner, "users", "show", "ANA@example.com")
    assert result.exit_code == 0, result.output
    assert f"#{people['ana'].id} ana@example.com (Ana Lopez)" in result.output
    assert "Tier:          premium (active)" in result.output
    assert "Today:         0 sessions, 10 left" in result.output
    assert "Last activity: -" in result.output


def test_users_show_unknown_email(runner, people):
    _one_line_error(_run(runner, "users", "show", "nobody@example.com"),
                    "no user with email 'nobody@example.com'")


def test_users_show_ambiguous_email(runner, db_session, make_user):
    make_user("twin@example.com")
    make_user("TWIN@example.com", sub="other-sub")
    _one_line_error(_run(runner, "users", "show", "twin@example.com"), "several users")


def test_users_set_tier(runner, people, db_session):
    result = _run(runner, "users", "set-tier", "ana@example.com", "pro", "--reason", "partner")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "ana@example.com is now on pro (complimentary grant recorded)."
    db_session.expire_all()
    sub = db_session.query(UserSubscription).filter_by(user_id=people["ana"].id).one()
    assert (sub.tier, sub.status, sub.complimentary) == ("pro", "active", True)
    event = db_session.query(SubscriptionEvent).filter_by(type="complimentary_grant").one()
    assert (event.from_tier, event.to_tier, event.details["reason"]) == (
        "premium", "pro", "partner")
    entry = db_session.query(AuditLog).one()
    assert entry.action == "user.tier_grant" and entry.actor_id is None
    assert entry.actor_label.startswith("cli")

    again = _run(runner, "users", "set-tier", "ana@example.com", "pro")
    assert again.exit_code == 0
    assert again.output.strip() == "ana@example.com is already on pro; nothing changed."
    assert db_session.query(AuditLog).count() == 1


def test_users_set_tier_errors(runner, people, db_session):
    _one_line_error(_run(runner, "users", "set-tier", "ana@example.com", "gold"),
                    "unknown tier 'gold'; choose one of starter, premium, pro")
    _one_line_error(_run(runner, "users", "set-tier", "nobody@example.com", "pro"),
                    "no user with email")
    db_session.expire_all()
    assert db_session.query(UserSubscription).filter_by(
        user_id=people["ana"].id).one().tier == "premium"
    assert db_session.query(AuditLog).count() == 0


def test_users_suspend_and_activate(runner, client, auth, db_session):
    headers = auth("ana@example.com")
    assert client.get("/api/user/profile", headers=headers).status_code == 200

    result = _run(runner, "users", "suspend", "ana@example.com", "--reason", "abuse")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "ana@example.com is now suspended."
    res = client.get("/api/user/profile", headers=headers)
    assert res.status_code == 403 and res.json["code"] == "account_suspended"
    again = _run(runner, "users", "suspend", "ana@example.com")
    assert again.output.strip() == "ana@example.com is already suspended; nothing changed."

    result = _run(runner, "users", "activate", "ana@example.com")
    assert result.exit_code == 0
    assert result.output.strip() == "ana@example.com is now active."
    assert client.get("/api/user/profile", headers=headers).status_code == 200
    actions = [a for (a,) in db_session.query(AuditLog.action).order_by(AuditLog.id)]
    assert actions == ["user.suspend", "user.activate"]


@pytest.mark.parametrize("command", ["suspend", "activate"])
def test_users_suspend_activate_unknown_email(runner, command):
    _one_line_error(_run(runner, "users", command, "ghost@example.com"), "no user with email")


def test_stats(runner, people):
    result = _run(runner, "stats")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Users:         3 (starter 1, premium 1, pro 1; 1 suspended)" in out
    assert "MRR:           9.99 USD" in out
    assert "1 trialing" in out
    assert "Computed at:" in out


def test_stats_json_and_refresh(runner, people, db_session, make_user):
    first = json.loads(_run(runner, "stats", "--json").output)
    assert first["users_total"] == 3 and first["mrr"] == "9.99"
    make_user("dan@example.com", tier="pro")
    cached = json.loads(_run(runner, "stats", "--json").output)
    assert cached == first
    fresh = json.loads(_run(runner, "stats", "--json", "--refresh").output)
    assert fresh["users_total"] == 4 and fresh["mrr"] == "29.98"
