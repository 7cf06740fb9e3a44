"""Commands of the users domain: ``users list|show|set-tier|suspend|activate`` and ``stats``.

Thin: each command calls the same services as the admin API. A tier or status that is not
one of the choices is a usage error (exit code 2, the choices shown in ``--help``); an unknown
email is a one-line error on stderr and exit code 1. ``--json`` prints what the admin API
answers. Changes are audited with the operator's login name.
"""

from __future__ import annotations

from datetime import datetime

import click

from ..api_errors import ApiError
from ..schemas.admin import (
    USER_STATUS_FILTERS,
    AdminUserDetailSchema,
    AdminUserQuerySchema,
    AdminUserSummarySchema,
    AdminUserUpdateSchema,
    PlatformStatsSchema,
)
from ..services.admin_users import find_users_by_email, list_users, update_user, user_detail
from ..services.stats import get_platform_stats
from ..tiers import TIER_NAMES
from .base import checked_text, echo_json, fail, json_option, operator_label, shown, sonicus_cli

# As the admin API pages (``PageArgsSchema``): a page past it is an offset no database takes.
MAX_PAGE = 100000


def _resolve_user(email: str):
    users = find_users_by_email(email)
    if not users:
        fail(f"no user with email {email!r}")
    if len(users) > 1:
        ids = ", ".join(str(u.id) for u in users)
        fail(f"several users have email {email!r} (ids {ids}); this is ambiguous")
    return users[0]


def _search(ctx, param, value):
    """``--q`` as the admin API takes it (``AdminUserQuerySchema``): else a usage error."""
    if value is None:
        return None
    errors = AdminUserQuerySchema().validate({"q": value})
    if "q" in errors:
        raise click.BadParameter(" ".join(errors["q"]))
    return value


def _reason(ctx, param, value):
    """``--reason`` as the admin API takes it (``AdminUserUpdateSchema``): else a usage error."""
    if value is None:
        return None
    errors = AdminUserUpdateSchema().validate({"is_active": True, "reason": value})
    if "reason" in errors:
        raise click.BadParameter(" ".join(errors["reason"]))
    return value


reason_option = click.option("--reason", default=None, callback=_reason,
                             help="Why, 1..500 characters: kept in the audit log (and on a "
                                  "tier grant's event).")


def _when(value) -> str:
    """A dumped date-time (ISO 8601) as the operator reads it."""
    if value is None:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")


@sonicus_cli.group("users")
def users_cli():
    """List, inspect and manage users."""


@users_cli.command("list")
@click.option("--q", "q", default=None, callback=_search,
              help="Part of the email or display name (1..100 characters).")
@click.option("--tier", default=None, type=click.Choice(TIER_NAMES), help="Only this tier.")
@click.option("--status", default=None, type=click.Choice(USER_STATUS_FILTERS),
              help="A subscription status, or suspended accounts.")
@click.option("--page", default=1, show_default=True, type=click.IntRange(1, MAX_PAGE))
@click.option("--per-page", default=50, show_default=True, type=click.IntRange(1, 1000))
@json_option
def list_users_command(q, tier, status, page, per_page, as_json):
    """Users, newest first."""
    found = list_users({"q": q, "tier": tier, "status": status, "page": page,
                        "per_page": per_page})
    rows, total = found.items, found.total
    if as_json:
        echo_json({"users": AdminUserSummarySchema(many=True).dump(rows),
                   "pagination": found.pagination})
        return
    if not rows:
        click.echo("No users found." if total == 0
                   else f"No users on page {page} ({total} in all).")
        return
    header = f"{'ID':>7}  {'EMAIL':<32}  {'NAME':<20}  {'TIER':<8}  {'STATUS':<10}  ACCOUNT"
    click.echo(header)
    for row in rows:
        account = "active" if row.is_active else "SUSPENDED"
        if row.role == "admin":
            account += " (admin)"
        click.echo(f"{row.id:>7}  {shown(row.email)[:32]:<32}  "
                   f"{shown(row.display_name or '-')[:20]:<20}  {row.tier:<8}  "
                   f"{row.subscription_status:<10}  {account}")
    first = (page - 1) * per_page + 1
    click.echo(f"{first}-{first + len(rows) - 1} of {total} users.")


def _print_detail(detail: dict) -> None:
    """``detail``: a user as ``AdminUserDetailSchema`` dumps it."""
    sub, usage = detail["subscription"], detail["usage"]
    remaining = "unlimited" if usage["sessions_remaining"] is None else usage["sessions_remaining"]
    verified = "verified" if detail["email_verified"] else "not verified"
    lines = [
        ("User", f"#{detail['id']} {shown(detail['email'])} "
                 f"({shown(detail['display_name']) or 'no name'})"),
        ("Account", ("active" if detail["is_active"] else "SUSPENDED")
         + f", role {detail['role']}, email {verified}"),
        ("Tier", f"{sub['tier']} ({sub['status']}"
         + (", complimentary" if sub["complimentary"] else "")
         + (", cancels at period end" if sub["cancel_at_period_end"] else "") + ")"),
        ("Trial ends", _when(sub["trial_ends_at"])),
        ("Period ends", _when(sub["current_period_end"])),
        ("Today", f"{usage['sessions_today']} sessions, {remaining} left, "
                  f"resets {_when(usage['resets_at'])}"),
        ("Sessions", str(detail["sessions_total"])),
        ("Last activity", _when(detail["last_activity_at"])),
        ("Time zone", f"{detail['timezone']} (day starts {detail['day_start_hour']:02d}:00)"),
        ("Created", _when(detail["created_at"])),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':<15}{value}")


@users_cli.command("show")
@click.argument("email", callback=checked_text)
@json_option
def show_user(email, as_json):
    """One user: subscription, usage today, last activity."""
    detail = AdminUserDetailSchema().dump(user_detail(_resolve_user(email).id))
    if as_json:
        echo_json(detail)
        return
    _print_detail(detail)


@users_cli.command("set-tier")
@click.argument("email", callback=checked_text)
@click.argument("tier", type=click.Choice(TIER_NAMES))
@reason_option
def set_tier(email, tier, reason):
    """Grant TIER to the user now, free of charge (a complimentary grant)."""
    user = _resolve_user(email)
    changes = {"tier": tier, **({"reason": reason} if reason is not None else {})}
    try:
        changed = update_user(None, user.id, changes, actor_label=operator_label())
    except ApiError as exc:  # refused (a paid period running), or the provider unreachable
        fail(exc.description)
    if changed:
        click.echo(f"{shown(user.email)} is now on {tier} (complimentary grant recorded).")
    else:
        click.echo(f"{shown(user.email)} is already on {tier}; nothing changed.")


def _set_active(email: str, active: bool, reason: str | None) -> None:
    user = _resolve_user(email)
    changes = {"is_active": active, **({"reason": reason} if reason is not None else {})}
    try:
        changed = update_user(None, user.id, changes, actor_label=operator_label())
    except ApiError as exc:  # the account was erased since it was found
        fail(exc.description)
    state = "active" if active else "suspended"
    if changed:
        click.echo(f"{shown(user.email)} is now {state}.")
    else:
        click.echo(f"{shown(user.email)} is already {state}; nothing changed.")


@users_cli.command("suspend")
@click.argument("email", callback=checked_text)
@reason_option
def suspend(email, reason):
    """Suspend the account: every request gets 403 account_suspended, sockets close."""
    _set_active(email, False, reason)


@users_cli.command("activate")
@click.argument("email", callback=checked_text)
@reason_option
def activate(email, reason):
    """Reactivate a suspended account."""
    _set_active(email, True, reason)


@sonicus_cli.command("stats")
@click.option("--refresh", is_flag=True, help="Compute now instead of using the cached figures.")
@json_option
def stats(refresh, as_json):
    """Platform figures: users, subscriptions, revenue, listening."""
    data = PlatformStatsSchema().dump(get_platform_stats(refresh=refresh))
    if as_json:
        echo_json(data)
        return
    rate = data["trial_conversion_rate"]
    tiers = ", ".join(f"{name} {count}" for name, count in data["users_by_tier"].items())
    lines = [
        ("Users", f"{data['users_total']} ({tiers}; {data['users_suspended']} suspended)"),
        ("Subscriptions", f"{data['active_subscriptions']} paid tiers in force "
                          f"({data['paying_subscriptions']} paying, "
                          f"{data['complimentary_subscriptions']} complimentary), "
                          f"{data['trialing']} trialing"),
        ("MRR", f"{data['mrr']} {data['currency']}"),
        ("Trials", f"{data['trials_converted']} of {data['trials_ended']} ended trials converted"
                   + (f" ({rate * 100:.1f}%)" if rate is not None else "")),
        ("Sessions", f"{data['sessions_today']} today (UTC), {data['sessions_30d']} in 30 days, "
                     f"{data['avg_session_minutes']} min on average"),
        ("Active users", f"{data['active_users_7d']} in 7 days, "
                         f"{data['active_users_30d']} in 30 days"),
        ("Computed at", data["computed_at"]),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':<15}{value}")
