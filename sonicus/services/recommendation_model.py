"""The mood-outcome model behind recommendations (API.md "Recommendations"): its tables
(``models.recommendations``), built in SQL. Ranking a user's packages from them is
``services.recommendations``.

Built from the sessions that count (``ListeningSession.counts_in_outcomes``: no refunded taps,
at least a minute listened) with a mood before and after; a session's lift is
``mood_after - mood_before``:

- A user's rating bias: how far their lifts sit from each package's mean, averaged and shrunk
  (``BIAS_PRIOR_SESSIONS``). Adjusted lifts have it taken out; every estimate uses them.
- Each user's sums per package (and whether their two latest sessions of it both lowered the
  mood), each package's population sums, and per cohort ("people like you": one goal from
  ``preferences.goals`` and the starting-mood band of the user's mean ``mood_before``, or the
  goal alone) each package's sums. Goals are grouped by key (``models.user.goal_key``). A
  cohort row is kept only when no group of fewer than ``MIN_GROUP_USERS`` listeners (besides
  the asker) can be worked out from it by combining it with the package's other figures
  (``services.recommendation_cohorts``).
- ``k_user = noise variance / between-user variance``, estimated from the variance components
  of the adjusted lifts (one-way random effects over (user, package) groups), kept within
  ``K_MIN..K_MAX``; ``DEFAULT_K`` while there is too little data to estimate it. With
  ``k >= 4`` one +8 session cannot outrank thirty +2 sessions. ``k_package`` likewise from the
  between-package variance; ``k_cohort`` is ``K_COHORT``.

The platform job (``rebuild_recommendation_model``) rebuilds every table with INSERT ... SELECT
and GROUP BY; a user's own rows are rebuilt with their analytics refresh
(``refresh_user_outcomes``).
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import and_, case, delete, exists, func, literal, or_, select, text
from sqlalchemy.dialects import postgresql

from .. import clock
from ..extensions import db
from ..models import ListeningSession
from ..models.recommendations import (
    BAND_ANY,
    BAND_HIGH,
    BAND_LOW,
    BAND_MID,
    CohortOutcome,
    PackageOutcome,
    RecommendationParams,
    UserOutcomeProfile,
    UserPackageOutcome,
)
from ..tasks.queue import QUEUE_MAINTENANCE, enqueue, job_is_pending
from .recommendation_cohorts import (
    USER_GOALS,
    hide_disclosing_cohorts,
    load_user_goals,
)
from .transaction import unit_of_work

log = logging.getLogger(__name__)

PARAMS_ID = 1
BIAS_PRIOR_SESSIONS = 3.0
DEFAULT_K = 5.0
K_MIN, K_MAX = 4.0, 50.0
K_COHORT = 20.0
# Fewer (user, package) groups than this: k is not estimated (DEFAULT_K).
MIN_GROUPS_FOR_ESTIMATE = 50
# The rebuild an erasure asks for (one waiting at a time; the hourly slots have their own ids).
REBUILD_AFTER_ERASURE_JOB_ID = "rebuild-recommendation-model-after-erasure"
# Mean mood_before bands: below 4.5 low, below 7 mid, else high.
BAND_LOW_BELOW, BAND_MID_BELOW = 4.5, 7.0
MODEL_LOCK = "sonicus-recommendation-model"


def _lock_model(*, shared: bool) -> None:
    """Serialise writers of the model's tables (PostgreSQL: a transaction-scoped advisory
    lock, taken before the tables are touched). A rebuild takes it alone: two rebuilds (the
    hourly one and one an erasure queued, on two workers) run one after the other instead of
    the later one's rows colliding with the earlier one's. A user's own rows
    (``refresh_user_outcomes``) take it shared: refreshes of users run side by side, and
    wait for a rebuild, or it for them, instead of writing a row the rebuild wrote too."""
    if db.session.get_bind().dialect.name == "postgresql":
        lock = func.pg_advisory_xact_lock_shared if shared else func.pg_advisory_xact_lock
        db.session.execute(select(lock(func.hashtextextended(MODEL_LOCK, 0))))


def _counting(user_id: int | None = None):
    """The sessions that feed the model: they count, with both moods, of a known user."""
    s = ListeningSession
    stmt = (select(s.id, s.user_id, s.package_id, s.started_at, s.mood_before,
                   (s.mood_after - s.mood_before).label("lift"))
            .where(s.user_id.is_not(None), s.mood_before.is_not(None),
                   s.mood_after.is_not(None), s.counts_in_outcomes))
    if user_id is not None:
        stmt = stmt.where(s.user_id == user_id)
    return stmt.subquery("counting")


_USER_PACKAGE_SUMS = ("sessions", "lift_sum", "lift_squares", "mood_before_sum",
                      "recent_negative")


def _user_package_sums(user_id: int | None = None):
    """SELECT of each user's sums per package (the one pass over the sessions; every other
    figure derives from these rows), and whether their two latest sessions of it both lowered
    the mood."""
    c = _counting(user_id)
    ranked = (select(c.c.user_id, c.c.package_id, c.c.lift, c.c.mood_before,
                     func.row_number().over(partition_by=(c.c.user_id, c.c.package_id),
                                            order_by=(c.c.started_at.desc(), c.c.id.desc()))
                     .label("recency")).subquery())
    recent_lowered = func.sum(case((and_(ranked.c.recency <= 2, ranked.c.lift < 0), 1),
                                   else_=0))
    return (select(ranked.c.user_id, ranked.c.package_id, func.count(), func.sum(ranked.c.lift),
                   func.sum(ranked.c.lift * ranked.c.lift), func.sum(ranked.c.mood_before),
                   recent_lowered >= 2)
            .group_by(ranked.c.user_id, ranked.c.package_id))


def _insert_user_packages(user_id: int | None = None) -> None:
    db.session.execute(UserPackageOutcome.__table__.insert().from_select(
        ["user_id", "package_id", *_USER_PACKAGE_SUMS], _user_package_sums(user_id)))


def _sync_user_packages() -> None:
    """Bring every user's per-package rows in line with the sessions (PostgreSQL): rows whose
    sums changed are updated, new ones inserted, unchanged ones left alone (most of them, as
    each user's analytics refresh keeps their own rows current), and rows without a counting
    session any more deleted."""
    up = UserPackageOutcome
    stmt = postgresql.insert(up).from_select(["user_id", "package_id", *_USER_PACKAGE_SUMS],
                                             _user_package_sums())
    stmt = stmt.on_conflict_do_update(
        index_elements=[up.user_id, up.package_id],
        set_={name: stmt.excluded[name] for name in _USER_PACKAGE_SUMS},
        where=or_(*(getattr(up, name).is_distinct_from(stmt.excluded[name])
                    for name in _USER_PACKAGE_SUMS)))
    db.session.execute(stmt)
    c = _counting()
    db.session.execute(delete(up).where(~exists().where(
        c.c.user_id == up.user_id, c.c.package_id == up.package_id)))


def _band(mean_mood_before):
    return case((mean_mood_before < BAND_LOW_BELOW, BAND_LOW),
                (mean_mood_before < BAND_MID_BELOW, BAND_MID), else_=BAND_HIGH)


def _insert_profiles(package_means, now: datetime, user_id: int | None = None) -> None:
    """Each user's bias (their lifts beyond each package's mean in ``package_means``
    (package_id, mean), shrunk) and band, from their per-package rows."""
    up, m = UserPackageOutcome, package_means
    residual = up.lift_sum - up.sessions * func.coalesce(m.c.mean, 0.0)
    stmt = (select(up.user_id, func.sum(up.sessions),
                   func.sum(residual) / (func.sum(up.sessions) + BIAS_PRIOR_SESSIONS),
                   _band(func.sum(up.mood_before_sum) * 1.0 / func.sum(up.sessions)),
                   literal(now, UserOutcomeProfile.computed_at.type))
            .select_from(up).outerjoin(m, m.c.package_id == up.package_id)
            .group_by(up.user_id))
    if user_id is not None:
        stmt = stmt.where(up.user_id == user_id)
    db.session.execute(UserOutcomeProfile.__table__.insert().from_select(
        ["user_id", "sessions", "bias", "band", "computed_at"], stmt))


def _adjusted_sum():
    """A user's lift sum for a package with their bias taken out (SQL)."""
    return UserPackageOutcome.lift_sum - UserPackageOutcome.sessions * UserOutcomeProfile.bias


def _insert_cohorts() -> None:
    """Cohort rows: one pass over the per-user rows (and the users' goals by key, loaded by
    ``recommendation_cohorts.load_user_goals``) makes the (goal, band, package) rows, the
    (goal, any band, package) rows are summed from those, then the rows whose figures, with
    the others shown, would single out fewer than ``MIN_GROUP_USERS`` listeners go
    (``recommendation_cohorts.hide_disclosing_cohorts``)."""
    up, pr, co = UserPackageOutcome, UserOutcomeProfile, CohortOutcome
    goal_sets = load_user_goals()
    goals = USER_GOALS
    columns = ["goal", "band", "package_id", "sessions", "users", "lift_sum", "adjusted_sum"]
    db.session.execute(co.__table__.insert().from_select(columns, (
        select(goals.c.goal, pr.band, up.package_id, func.sum(up.sessions), func.count(),
               func.sum(up.lift_sum), func.sum(_adjusted_sum()))
        .select_from(up).join(pr, pr.user_id == up.user_id)
        .join(goals, goals.c.user_id == up.user_id)
        .group_by(goals.c.goal, pr.band, up.package_id))))
    # A user has one band: the users of the bands add up to the goal's.
    db.session.execute(co.__table__.insert().from_select(columns, (
        select(co.goal, literal(BAND_ANY), co.package_id, func.sum(co.sessions),
               func.sum(co.users), func.sum(co.lift_sum), func.sum(co.adjusted_sum))
        .where(co.band != BAND_ANY).group_by(co.goal, co.package_id))))
    hide_disclosing_cohorts(goal_sets)


def _variance_components() -> dict:
    """Noise and between-user variance of adjusted lifts around each package's mean, and
    between-package variance of the package means, by one-way ANOVA (method of moments) over
    the (user, package) groups."""
    up, pr, po = UserPackageOutcome, UserOutcomeProfile, PackageOutcome
    # A group's mean deviation from its package's adjusted mean; within a group the bias is
    # a constant, so the within-group sum of squares is the raw lifts'.
    deviation = _adjusted_sum() / up.sessions - po.adjusted_sum / po.sessions
    n_total, n_groups, within_ss, between_ss, nsq = db.session.execute(
        select(func.coalesce(func.sum(up.sessions), 0), func.count(),
               func.coalesce(func.sum(up.lift_squares - up.lift_sum * up.lift_sum
                                      / up.sessions), 0.0),
               func.coalesce(func.sum(up.sessions * deviation * deviation), 0.0),
               func.coalesce(func.sum(up.sessions * up.sessions), 0))
        .select_from(up).join(pr, pr.user_id == up.user_id)
        .join(po, po.package_id == up.package_id)).one()
    packages = db.session.execute(select(
        func.count(), func.coalesce(func.sum(po.sessions), 0),
        func.coalesce(func.sum(po.adjusted_sum * po.adjusted_sum / po.sessions), 0.0),
        func.coalesce(func.sum(po.adjusted_sum), 0.0),
        func.coalesce(func.sum(po.sessions * po.sessions), 0)).where(po.sessions > 0)).one()
    n_total, n_groups, nsq = int(n_total), int(n_groups), int(nsq)
    within_ss, between_ss = float(within_ss), float(between_ss)
    out = {"sessions": n_total, "noise": 0.0, "between_users": 0.0,
           "k_user": DEFAULT_K, "k_package": DEFAULT_K}
    if n_groups < MIN_GROUPS_FOR_ESTIMATE or n_total - n_groups < MIN_GROUPS_FOR_ESTIMATE:
        return out
    noise = max(within_ss / (n_total - n_groups), 1e-6)
    msb = between_ss / (n_groups - 1)
    n0 = (n_total - nsq / n_total) / (n_groups - 1)
    between = max((msb - noise) / n0, 1e-6)
    out.update(noise=noise, between_users=between,
               k_user=min(K_MAX, max(K_MIN, noise / between)))
    p_count, p_n, p_sb, p_s, p_nsq = packages
    p_count, p_n, p_nsq, p_sb, p_s = int(p_count), int(p_n), int(p_nsq), float(p_sb), float(p_s)
    if p_count >= 3 and p_n > p_count:
        within = noise + between  # one session's variance around its package's mean
        mean = p_s / p_n
        msb_p = (p_sb - p_n * mean * mean) / (p_count - 1)
        n0_p = (p_n - p_nsq / p_n) / (p_count - 1)
        between_p = max((msb_p - within) / n0_p, 1e-6)
        out["k_package"] = min(K_MAX, max(K_MIN, within / between_p))
    return out


def rebuild_recommendation_model() -> dict:
    """Periodic platform job: rebuild every recommendation table from the sessions that count
    (one transaction; readers see the previous tables until it commits). One pass over the
    sessions builds each user's per-package rows; the rest is derived from those."""
    now = clock.now()
    up, pr = UserPackageOutcome, UserOutcomeProfile
    with unit_of_work():
        _lock_model(shared=False)
        postgres = db.session.get_bind().dialect.name == "postgresql"
        if postgres:
            db.session.execute(text("SET LOCAL work_mem = '64MB'"))  # sorts in memory
        for model in (CohortOutcome, UserOutcomeProfile, PackageOutcome, RecommendationParams,
                      *(() if postgres else (UserPackageOutcome,))):
            db.session.execute(delete(model))
        if postgres:
            _sync_user_packages()
        else:
            _insert_user_packages()
        raw_means = (select(up.package_id,
                            (func.sum(up.lift_sum) * 1.0 / func.sum(up.sessions)).label("mean"))
                     .group_by(up.package_id).subquery("package_means"))
        _insert_profiles(raw_means, now)
        db.session.execute(PackageOutcome.__table__.insert().from_select(
            ["package_id", "sessions", "users", "lift_sum", "adjusted_sum"],
            select(up.package_id, func.sum(up.sessions), func.count(), func.sum(up.lift_sum),
                   func.sum(_adjusted_sum()))
            .select_from(up).join(pr, pr.user_id == up.user_id).group_by(up.package_id)))
        _insert_cohorts()
        figures = _variance_components()
        mean_lift = db.session.execute(select(
            func.coalesce(func.sum(PackageOutcome.lift_sum) / func.nullif(
                func.sum(PackageOutcome.sessions), 0), 0.0))).scalar_one()
        db.session.add(RecommendationParams(
            id=PARAMS_ID, sessions=figures["sessions"], mean_lift=float(mean_lift),
            noise_variance=figures["noise"], user_variance=figures["between_users"],
            k_user=figures["k_user"], k_cohort=K_COHORT, k_package=figures["k_package"],
            computed_at=now))
    log.info("recommendation model rebuilt: %d sessions, k_user %.2f, k_package %.2f",
             figures["sessions"], figures["k_user"], figures["k_package"])
    return figures


def refresh_user_outcomes(user_id: int) -> None:
    """Rebuild one user's own rows (per-package sums, bias, band) against the stored package
    figures, in the caller's transaction (the analytics refresh)."""
    _lock_model(shared=True)
    for model in (UserPackageOutcome, UserOutcomeProfile):
        db.session.execute(delete(model).where(model.user_id == user_id))
    _insert_user_packages(user_id)
    po = PackageOutcome
    means = (select(po.package_id, (po.lift_sum / po.sessions).label("mean"))
             .where(po.sessions > 0).subquery("package_means"))
    _insert_profiles(means, clock.now(), user_id)


def request_rebuild_after_erasure() -> None:
    """An erased account's moods are in the group figures (population, cohorts) that everyone
    else's recommendations read: rebuild them now rather than at the next hourly slot (after
    the erasure's commit; best effort, the hourly rebuild is the fallback)."""
    if job_is_pending(REBUILD_AFTER_ERASURE_JOB_ID):
        return
    try:
        enqueue(rebuild_recommendation_model, queue=QUEUE_MAINTENANCE,
                job_id=REBUILD_AFTER_ERASURE_JOB_ID, best_effort=True)
    except Exception:  # run inline (no Redis) and failed: the erasure stands all the same
        log.exception("recommendation model rebuild after an erasure failed")
