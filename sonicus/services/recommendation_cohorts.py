"""The cohorts of the recommendation model ("people like you"): who has which goal, and which
cohort figures may be shown at all. ``services.recommendation_model`` builds the tables with
them; README "Recommendations" states the rule.

**Goals** are grouped by ``models.user.goal_key`` (NFKC and full case folding), computed here in
Python, the same function the ranking matches a user's goals with
(``services.recommendations``): SQL's ``lower()`` differs from it (Greek final sigma, the
Turkish dotted capital I, compatibility forms). Each rebuild puts every user's goal keys in a
temporary table of its transaction (``load_user_goals``), with a number for each user's set of
goals. A goal that fewer than ``MIN_GROUP_USERS`` users have can make no cohort and is left out.

**Disclosure.** A user sees, for a package, the population's figure and any cohort row
(goal, band or any band) of it: they can change their goals, so every row shown to anyone is a
figure they can request, and combine. Any sum or difference of such figures is a sum over the
*classes* of the package's listeners: the listeners who belong to exactly the same figures. So
the rows kept (``hide_disclosing_cohorts``) are chosen, per package, largest first, such that
every class has more than ``MIN_GROUP_USERS`` listeners (at least that many besides any one
asker, who can take their own sessions out) unless all the listeners are one class (then the
figures are all the population's, and the reader's own rule applies: at least
``MIN_GROUP_USERS`` users besides the asker). A row that would split a class below that is
dropped. Nested cohorts (one goal's listeners all in another's but one), overlapping ones
(a listener in two cohorts: A + B + C - population) and the bands within a goal are all
covered by the one rule.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from sqlalchemy import bindparam, column, delete, func, select, table, text

from ..extensions import db
from ..models import User
from ..models.recommendations import BAND_ANY, CohortOutcome, UserOutcomeProfile, UserPackageOutcome
from ..models.user import GOAL_KEY_MAX_LENGTH, goal_key

MIN_GROUP_USERS = 5

USER_GOALS = table("recommendation_user_goals", column("user_id"), column("goal"))
USER_GOAL_SETS = table("recommendation_user_goal_sets", column("user_id"), column("goal_set"))


def _is_postgresql() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


def _stored_goals():
    """(user_id, preferences.goals) of the users whose goals are a list."""
    goals = User.preferences["goals"]
    if _is_postgresql():
        return select(User.id, goals).where(func.json_typeof(goals) == "array")
    return select(User.id, goals).where(func.json_type(User.preferences, "$.goals") == "array")


def load_user_goals() -> dict[int, frozenset]:
    """Fill this transaction's ``USER_GOALS`` (user_id, goal key) and ``USER_GOAL_SETS``
    (user_id, the number of their set of goal keys); the sets by number. Only goals that at
    least ``MIN_GROUP_USERS`` users have."""
    keys_of: dict[int, frozenset] = {}
    for user_id, goals in db.session.execute(_stored_goals()):
        keys = frozenset(k for k in map(goal_key, goals if isinstance(goals, list) else ()) if k)
        if keys:
            keys_of[user_id] = keys
    holders = Counter(key for keys in keys_of.values() for key in keys)
    numbers: dict[frozenset, int] = {}
    goal_rows, set_rows = [], []
    for user_id, keys in keys_of.items():
        keys = frozenset(key for key in keys if holders[key] >= MIN_GROUP_USERS)
        if not keys:
            continue
        goal_rows.extend((user_id, key) for key in sorted(keys))
        set_rows.append((user_id, numbers.setdefault(keys, len(numbers) + 1)))
    _create_and_fill(USER_GOALS.name, f"user_id INTEGER NOT NULL, "
                     f"goal VARCHAR({GOAL_KEY_MAX_LENGTH}) NOT NULL", "text", goal_rows)
    _create_and_fill(USER_GOAL_SETS.name, "user_id INTEGER NOT NULL, goal_set INTEGER NOT NULL",
                     "integer", set_rows)
    return {number: keys for keys, number in numbers.items()}


def _create_and_fill(name: str, columns: str, second_type: str, rows: list[tuple]) -> None:
    """A temporary table of this transaction (dropped at its end on PostgreSQL; on SQLite the
    one left by the previous build is dropped first), filled with ``rows``."""
    first, second = (c.split()[0] for c in columns.split(", "))
    if _is_postgresql():
        db.session.execute(text(f"CREATE TEMPORARY TABLE {name} ({columns}) ON COMMIT DROP"))
        if rows:
            db.session.execute(text(
                f"INSERT INTO {name} ({first}, {second}) SELECT * FROM "
                f"unnest(CAST(:firsts AS integer[]), CAST(:seconds AS {second_type}[]))"),
                {"firsts": [r[0] for r in rows], "seconds": [r[1] for r in rows]})
        db.session.execute(text(f"ANALYZE {name}"))  # the planner's row counts for the joins
        return
    db.session.execute(text(f"DROP TABLE IF EXISTS temp.{name}"))
    db.session.execute(text(f"CREATE TEMPORARY TABLE {name} ({columns})"))
    if rows:
        db.session.execute(text(f"INSERT INTO {name} ({first}, {second}) VALUES (:a, :b)"),
                           [{"a": a, "b": b} for a, b in rows])


def _classes_allow(counts: Counter) -> bool:
    """The listeners' classes (users per class) may be told apart: one class, or each of
    more than ``MIN_GROUP_USERS``."""
    return len(counts) <= 1 or min(counts.values()) > MIN_GROUP_USERS


def shown_rows(candidates: list[tuple], listeners: Counter, goal_sets: dict) -> set:
    """Of one package's cohort rows ``candidates`` [(goal, band, users)], those that may be
    shown together: taken largest first, each kept only when the classes of listeners it
    leaves are allowed (``_classes_allow``). ``listeners``: {(band, goal set number or None):
    users} of the package."""
    signatures = list(listeners.items())
    classes = [0] * len(signatures)  # each signature's class: the rows kept it belongs to
    shown = set()
    for goal, band, _users in sorted(candidates,
                                     key=lambda c: (-c[2], c[1] != BAND_ANY, c[0], c[1])):
        inside = [goal in goal_sets.get(goal_set, ()) and band in (BAND_ANY, own_band)
                  for (own_band, goal_set), _n in signatures]
        split: Counter = Counter()
        for (_signature, n), cls, member in zip(signatures, classes, inside, strict=True):
            split[(cls, member)] += n
        if not _classes_allow(split):
            continue
        numbers = {key: i for i, key in enumerate(split)}
        classes = [numbers[(cls, member)] for cls, member in zip(classes, inside, strict=True)]
        shown.add((goal, band))
    return shown


def hide_disclosing_cohorts(goal_sets: dict) -> None:
    """Delete the cohort rows that would let someone work out a group of fewer than
    ``MIN_GROUP_USERS`` listeners (besides themselves) by combining the figures shown (module
    doc): rows of fewer users than that, and per package those ``shown_rows`` leaves out."""
    co, up, pr, gs = CohortOutcome, UserPackageOutcome, UserOutcomeProfile, USER_GOAL_SETS
    db.session.execute(delete(co).where(co.users < MIN_GROUP_USERS))
    candidates: dict[int, list] = defaultdict(list)
    for package_id, goal, band, users in db.session.execute(
            select(co.package_id, co.goal, co.band, co.users)):
        candidates[package_id].append((goal, band, int(users)))
    if not candidates:
        return
    listeners: dict[int, Counter] = defaultdict(Counter)
    for package_id, band, goal_set, users in db.session.execute(
            select(up.package_id, pr.band, gs.c.goal_set, func.count())
            .select_from(up).join(pr, pr.user_id == up.user_id)
            .outerjoin(gs, gs.c.user_id == up.user_id)
            .group_by(up.package_id, pr.band, gs.c.goal_set)):
        listeners[package_id][(band, goal_set)] += int(users)
    hidden = []
    for package_id, rows in candidates.items():
        shown = shown_rows(rows, listeners[package_id], goal_sets)
        hidden.extend({"g": goal, "b": band, "p": package_id}
                      for goal, band, _users in rows if (goal, band) not in shown)
    if hidden:
        rows = co.__table__.c
        db.session.execute(co.__table__.delete().where(
            rows.goal == bindparam("g"), rows.band == bindparam("b"),
            rows.package_id == bindparam("p")), hidden)
