"""The users and stats commands, run through Flask's CLI runner against PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from sonicus import clock
from sonicus.models import AuditLog, SubscriptionEvent, User, UserSubscription

ROOT = Path(__file__).resolve().parent.parent


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


def _usage_error(result, text):
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output and text in result.output, result.output
    assert "Traceback" not in result.output


def test_users_list_bad_filters_are_usage_errors(runner, people):
    _usage_error(_run(runner, "users", "list", "--tier", "gold"),
                 "'gold' is not one of 'starter', 'premium', 'pro'")
    _usage_error(_run(runner, "users", "list", "--status", "asleep"), "'asleep' is not one of")
    _usage_error(_run(runner, "users", "list", "--bogus"), "No such option")
    _usage_error(_run(runner, "users", "show"), "Missing argument")
    _usage_error(_run(runner, "analytics", "refresh"), "exactly one of --user EMAIL or --all")
    helped = _run(runner, "users", "list", "--help").output
    assert "[starter|premium|pro]" in helped and "suspended" in helped
    assert "{starter|premium|pro}" in _run(runner, "users", "set-tier", "--help").output
    assert "[starter|premium|pro]" in _run(runner, "dev-token", "--help").output


def test_users_list_and_show_as_json(runner, people):
    listed = _run(runner, "users", "list", "--json", "--tier", "premium")
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert [u["email"] for u in data["users"]] == ["ana@example.com"]
    assert data["users"][0]["tier"] == "premium"
    assert data["pagination"] == {"page": 1, "per_page": 50, "total": 1, "pages": 1}
    shown = json.loads(_run(runner, "users", "show", "ana@example.com", "--json").output)
    assert shown["id"] == people["ana"].id and shown["subscription"]["tier"] == "premium"
    assert shown["usage"]["sessions_remaining"] == 10
    assert json.loads(_run(runner, "users", "list", "--json", "--q", "nobody").output) == {
        "users": [], "pagination": {"page": 1, "per_page": 50, "total": 0, "pages": 0}}


def test_users_show(runner, people):
    result = _run(runner, "users", "show", "ANA@example.com")
    assert result.exit_code == 0, result.output
    assert f"#{people['ana'].id} ana@example.com (Ana Lopez)" in result.output
    assert "Tier:          premium (active)" in result.output
    assert "Today:         0 sessions, 10 left" in result.output
    assert "Last activity: -" in result.output


def test_users_list_and_show_give_the_tier_in_force_before_the_expiry_job(runner, db_session,
                                                                        make_user):
    """`sonicus users list|show` showed a user whose trial had ended still on the paid tier
    (trialing) until the expiry job ran; they show the tier in force."""
    make_user("over@example.com", tier="premium", status="trialing", trial_used=True,
              trial_ends_at=clock.now() - timedelta(minutes=5))
    row = _run(runner, "users", "list").output.strip().splitlines()[1].split()
    assert row[1:5] == ["over@example.com", "Listener", "starter", "active"], row
    assert json.loads(_run(runner, "users", "list", "--json").output)["users"][0]["tier"] \
        == "starter"
    shown = _run(runner, "users", "show", "over@example.com")
    assert "Tier:          starter (active)" in shown.output, shown.output
    assert "3 left" in shown.output


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
    _usage_error(_run(runner, "users", "set-tier", "ana@example.com", "gold"),
                 "'gold' is not one of 'starter', 'premium', 'pro'")
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


def _env(test_database_url, test_redis_url) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "SONICUS_"))}
    env.update(SONICUS_ENV="testing", DATABASE_URL=test_database_url, REDIS_URL=test_redis_url,
               OIDC_ISSUER="", PYTHONPATH=str(ROOT))
    return env


def test_flask_sonicus_works_in_the_checkout(people, test_database_url, test_redis_url):
    """``.flaskenv`` names the app: ``flask sonicus ...`` without ``--app``."""
    done = subprocess.run([sys.executable, "-m", "flask", "sonicus", "users", "list", "--json"],
                          cwd=ROOT, env=_env(test_database_url, test_redis_url),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["users"]) == 3


def test_the_installed_console_command(people, test_database_url, test_redis_url):
    """``pip install -e .`` (``make install``) puts a ``sonicus`` command next to Python."""
    command = Path(sys.executable).parent / "sonicus"
    if not command.exists():
        pytest.skip("the checkout is not installed in this environment (make install)")
    env = _env(test_database_url, test_redis_url)
    done = subprocess.run([str(command), "users", "show", "ana@example.com", "--json"],
                          cwd="/", env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["email"] == "ana@example.com"
    usage = subprocess.run([str(command), "users", "list", "--tier", "gold"], cwd="/", env=env,
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "is not one of" in usage.stderr
    failed = subprocess.run([str(command), "users", "show", "ghost@example.com"], cwd="/",
                            env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and failed.stderr.startswith("Error: no user with email")


def test_users_set_tier_below_a_paid_period_is_a_one_line_error(runner, make_user, db_session):
    user = make_user("payer@example.com", tier="pro", provider="sandbox",
                     current_period_start=clock.now() - timedelta(days=1),
                     current_period_end=clock.now() + timedelta(days=29),
                     payment_method_on_file=True)
    _one_line_error(_run(runner, "users", "set-tier", "payer@example.com", "starter"),
                    "a lower tier cannot be granted over a paid period")
    db_session.expire_all()
    assert db_session.query(UserSubscription).filter_by(user_id=user.id).one().tier == "pro"
    assert db_session.query(AuditLog).count() == 0


@pytest.mark.parametrize("command", [("set-tier", "ana@example.com", "pro"),
                                     ("suspend", "ana@example.com")])
@pytest.mark.parametrize("reason", ["", "x" * 501])
def test_a_reason_the_admin_api_refuses_is_a_usage_error_and_changes_nothing(
        runner, people, db_session, command, reason):
    result = _run(runner, "users", *command, "--reason", reason)
    assert result.exit_code == 2, result.output
    assert "--reason" in result.output and "Traceback" not in result.output
    db_session.expire_all()
    sub = db_session.query(UserSubscription).filter_by(user_id=people["ana"].id).one()
    assert sub.tier == "premium" and people["ana"].is_active
    assert db_session.query(AuditLog).count() == 0


@pytest.mark.parametrize(("args", "named"), [
    (["users", "list", "--page", "99999999999999999999"], "--page"),
    (["users", "list", "--page", "100001"], "--page"),
    (["users", "list", "--q", "jos\udce9"], "--q"),
    (["users", "list", "--q", "x" * 101], "--q"),
    (["users", "show", "jos\udce9@example.com"], "EMAIL"),
    (["users", "suspend", "jos\udce9@example.com"], "EMAIL"),
    (["users", "activate", "jos\udce9@example.com"], "EMAIL"),
    (["users", "set-tier", "jos\udce9@example.com", "premium"], "EMAIL"),
])
def test_what_the_database_cannot_take_is_a_usage_error_naming_it(runner, people, db_session,
                                                                    args, named):
    """An operator typing an email in a terminal that is not UTF-8 (its bytes reach Python as
    lone surrogates), a search longer than the admin API takes, or a page number past any
    page, gets a usage error (exit code 2) naming the parameter, and nothing changes.
    Before, the database refused them and the command died with a Python traceback."""
    before = db_session.execute(select(func.count()).select_from(AuditLog)).scalar_one()
    result = _run(runner, *args)
    _usage_error(result, named)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert db_session.execute(select(func.count()).select_from(AuditLog)).scalar_one() == before


@pytest.mark.parametrize(("args", "named"), [
    (["analytics", "refresh", "--user", "jos\udce9@example.com"], "--user"),
    (["analytics", "refresh", "--user", "ana\x00@example.com"], "--user"),
    (["dev-token", "--email", "jos\udce9@example.com"], "--email"),
    (["dev-token", "--email", "jose@example.com", "--name", "Jos\udce9"], "--name"),
])
def test_text_that_is_not_utf8_is_a_usage_error_in_every_command(runner, people, db_session,
                                                                  args, named):
    """`sonicus analytics refresh --user` (and `dev-token --email/--name`) with an email typed
    in a terminal that is not UTF-8 printed a Python traceback; it is a usage error (exit
    code 2) naming the parameter, as in the users commands, and no account is created."""
    users = db_session.execute(select(func.count()).select_from(User)).scalar_one()
    result = _run(runner, *args)
    _usage_error(result, named)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert db_session.execute(select(func.count()).select_from(User)).scalar_one() == users


def test_every_text_parameter_of_the_cli_is_checked(app):
    """Every option or argument of the `sonicus` commands that takes free text is checked
    for bytes that are not UTF-8 (``checked_text``) or by an admin API schema: a command
    added later without it is caught here."""
    import click

    from sonicus.cli.base import checked_text, sonicus_cli

    def commands(group, path=()):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, (*path, name))
            else:
                yield (*path, name), command

    unchecked = []
    for path, command in commands(sonicus_cli):
        for param in command.params:
            if isinstance(param.type, click.types.StringParamType) and \
                    not getattr(param, "is_flag", False) and param.callback is None:
                unchecked.append((" ".join(path), param.name))
            elif param.callback is not None and param.callback is not checked_text:
                assert param.callback.__name__ in {"_search", "_reason"}, param.name
    assert unchecked == []


def test_suspending_an_account_erased_after_it_was_found_is_a_one_line_error(
        runner, people, monkeypatch):
    """The account an operator names is erased between the command finding it and changing
    it: a one-line error, exit code 1, instead of a traceback."""
    from sonicus.cli import users as users_cli
    from sonicus.services.users import erase_user

    real_update = users_cli.update_user

    def erased_first(actor, user_id, *args, **kwargs):
        erase_user(user_id)
        return real_update(actor, user_id, *args, **kwargs)

    monkeypatch.setattr(users_cli, "update_user", erased_first)
    _one_line_error(_run(runner, "users", "suspend", "ana@example.com"), "not found")


HOSTILE_NAME = "Eve\x1b]52;c;ZXZpbA==\x07\x1b[2J\n      1  root@example.com  Root \x9b31m\u202e"


def test_a_name_with_escape_sequences_cannot_write_to_the_operators_terminal(
        runner, db_session, make_user):
    """A user whose name (as their provider sends it) holds terminal escape sequences, a
    newline and a direction override: ``users list`` and ``users show`` print them as
    escapes, so the operator's terminal is not cleared, their clipboard not written and no
    row is forged in the table; ``--json`` escapes them too. Before, they were printed as
    they are."""
    from sonicus.models import User

    user = make_user("eve@example.com", name=HOSTILE_NAME)
    # a sign-in now leaves the direction override out; a name stored before kept it
    db_session.execute(update(User).where(User.id == user.id).values(display_name=HOSTILE_NAME))
    db_session.commit()
    listed = _run(runner, "users", "list")
    shown_detail = _run(runner, "users", "show", "eve@example.com")
    as_json = _run(runner, "users", "show", "eve@example.com", "--json")
    for result in (listed, shown_detail, as_json):
        assert result.exit_code == 0, result.output
        assert not any(ch in result.output for ch in "\x1b\x07\x9b\u202e"), result.output
    assert len(listed.output.strip().splitlines()) == 3  # header, Eve, the count
    assert "root@example.com" not in listed.output.splitlines()[2]
    assert "Eve\\x1b]52" in listed.output and "Eve\\x1b]52" in shown_detail.output
    assert json.loads(as_json.output)["display_name"] == HOSTILE_NAME


@pytest.mark.parametrize("name", ["Eve\x1b[2J", "Eve\nRoot", "Eve\x9b31m", "Eve\x7f"])
def test_a_display_name_with_control_characters_is_422_naming_it(client, auth, make_user,
                                                                  db_session, name):
    """Changing one's display name to one holding control characters (escape sequences,
    a newline) is 422 naming display_name and keeps the old name; before, it was stored,
    and every operator listing users printed it to their terminal."""
    from sonicus.models import User

    make_user("eve@example.com")
    headers = auth("eve@example.com")
    before = client.get("/api/user/profile", headers=headers).get_json()["data"]["display_name"]
    res = client.put("/api/user/profile", json={"display_name": name}, headers=headers)
    assert res.status_code == 422, res.get_json()
    assert res.get_json()["errors"] == ["display_name: Must not contain control characters."]
    db_session.expire_all()
    assert db_session.execute(select(User.display_name)).scalar_one() == before


@pytest.mark.parametrize("command", [("analytics", "refresh", "--user"), ("users", "show")])
def test_an_unknown_email_with_escape_sequences_is_printed_escaped(runner, people, command):
    """An email pasted from elsewhere that matches nobody is echoed in the error with its
    control characters escaped, by every command; ``analytics refresh --user`` printed it as
    it was, escape sequences and all, to the operator's terminal."""
    result = runner.invoke(args=["sonicus", *command, "eve\x1b[2J\x07@example.com"])
    assert result.exit_code == 1, result.output
    assert not any(ch in result.output for ch in "\x1b\x07"), repr(result.output)
    assert "\\x1b[2J" in result.output, result.output
