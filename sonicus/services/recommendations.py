"""Recommendations for a user (API.md "Recommendations"): the packages they can play, ranked
from the stored mood-outcome model (``services.recommendation_model`` builds it: the sessions
that count, lifts, the rating bias and adjusted lifts, cohorts, ``k_user``, ``k_cohort`` and
``k_package``).

- A package's population lift: its adjusted mean shrunk toward no effect,
  ``sum / (n + k_package)``: a package earns its lift with evidence.
- A cohort's lift per package: shrunk toward the package's population lift with ``k_cohort``.
  A group figure (package or cohort) is used only when at least ``MIN_GROUP_USERS`` other
  users stand behind it: one user's outcomes never move, nor show in, another user's list.
- A user's own expected lift (empirical Bayes): ``(n * own_mean + k_user * prior) / (n + k_user)``
  where the prior is the cohort's lift (else the population's), with the user's own sessions
  taken out of the group figures first.
- Confidence in 0..1: ``1 - w * (1 - r / 2)`` with ``w = k_user / (n + k_user)`` (the prior's
  share of the posterior mean) and ``r`` the reliability of the group figure the prior came
  from (``n' / (n' + k)``): no evidence at all is 0, much own evidence tends to 1, a large
  cohort alone gives 0.5.
- Score = expected lift + exploration + favourite bonus. Exploration (deterministic): a package
  with cohort evidence that it helps gets ``EXPLORATION * r * w * sqrt(between-user variance)``,
  largest when the user has not tried it. A package whose two latest counting sessions by this
  user both lowered the mood goes to the end of the list, whatever its score.

``recommendations_for`` answers from the stored rows in a fixed number of queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, and_, exists, literal, literal_column, or_, select

from .. import clock
from ..extensions import db
from ..models import SoundPackage, UserSoundPackage
from ..models.recommendations import (
    BAND_ANY,
    CohortOutcome,
    PackageOutcome,
    RecommendationParams,
    UserOutcomeProfile,
    UserPackageOutcome,
)
from ..models.user import goal_names
from ..tiers import PACKAGE_LEVELS, can_access_level
from .assignments import live_package_ids
from .catalog import PackageView
from .recommendation_cohorts import MIN_GROUP_USERS
from .recommendation_model import DEFAULT_K, K_COHORT, PARAMS_ID

DEFAULT_LIMIT = 10
MAX_LIMIT = 50
EXPLORATION = 0.15
FAVORITE_BONUS = 0.15

KIND_OWN, KIND_SIMILAR, KIND_FAVORITE, KIND_POPULAR = (
    "own_outcome", "similar_users", "favorite_category", "popular")
REASON_KINDS = (KIND_OWN, KIND_SIMILAR, KIND_FAVORITE, KIND_POPULAR)


@dataclass(frozen=True)
class Reason:
    kind: str
    text: str


@dataclass(frozen=True)
class Recommendation:
    """One recommended package (``RecommendationSchema``): ``package`` is the catalog view."""

    package: object
    score: float
    expected_mood_change: float
    confidence: float
    reason: Reason


@dataclass(frozen=True)
class _Candidate:
    package_id: int
    category: str
    popularity: int
    assigned: bool
    pop_n: int
    pop_users: int
    pop_lift_sum: float
    pop_adjusted: float
    own_n: int
    own_lift_sum: float
    own_adjusted: float
    recent_negative: bool


def _points(value: float) -> str:
    return f"{abs(value):.1f} point" + ("" if round(abs(value), 1) == 1.0 else "s")


def _sessions(n: int) -> str:
    return f"{n:,} session" + ("" if n == 1 else "s")


def _times(n: int) -> str:
    return f"{n:,} time" + ("" if n == 1 else "s")


_PACKAGE_COLUMNS = ("id", "slug", "title", "description", "category", "minimum_tier",
                    "duration_seconds", "track_count", "popularity", "image_path")
_NO_POPULATION = (0, 0, 0.0, 0.0)


class _SharedModel:
    """The part of the model every user reads alike: the platform figures, each package's
    population row and the cohort rows, as read at one build of the model (``stamp``)."""

    MAX_COHORT_KEYS = 1024

    def __init__(self, stamp, params: tuple, population: dict, cohorts: dict):
        self.stamp = stamp
        self.params = params  # (k_user, k_cohort, k_package, between-user variance)
        self.population = population  # {package_id: (sessions, users, lift_sum, adjusted)}
        self.cohorts = cohorts  # {goal: [(band, package_id, sessions, users, lift, adj)]}
        self._best: dict = {}

    def best_cohorts(self, goals: list[str], band) -> dict:
        """{package_id: (goal, band, sessions, users, lift_sum, adjusted_sum)}: for each
        package, the best-evidenced row of the user's cohorts (one of their goals, with their
        starting-mood band or any band); ties go to the first goal in alphabetical order."""
        goals = tuple(g for g in goals if g in self.cohorts)
        key = (goals, band)
        found = self._best.get(key)
        if found is not None:
            return found
        best: dict = {}
        for goal in goals:  # sorted keys (``rank_packages``)
            for cohort_band, package_id, n, users, lift_sum, adjusted in self.cohorts[goal]:
                if cohort_band != BAND_ANY and cohort_band != band:
                    continue
                # Prefer the user's own band (more alike), then the most sessions.
                rank = (cohort_band != BAND_ANY, n)
                if package_id not in best or rank > best[package_id][0]:
                    best[package_id] = (rank, (goal, cohort_band, n, users, lift_sum, adjusted))
        found = {pid: value for pid, (_rank, value) in best.items()}
        if len(self._best) >= self.MAX_COHORT_KEYS:
            self._best.clear()
        self._best[key] = found
        return found


# This process's copy of the shared part, replaced when the stored model's stamp changes
# (read with every request, so a rebuild by the job is seen by every process at once).
_shared: _SharedModel | None = None


def _model_stamp():
    """SQL of the stored model's build stamp: the transaction id that wrote the parameters
    row (the job rewrites it with every build) on PostgreSQL; none elsewhere (no caching)."""
    if db.session.get_bind().dialect.name != "postgresql":
        return literal(None, String)
    rp = RecommendationParams
    return (select(literal_column("xmin::text || '/' || computed_at::text"))
            .where(rp.id == PARAMS_ID).scalar_subquery())


def _load_shared(stamp) -> _SharedModel:
    """The shared part of the model, from the stored rows; kept for the next requests when
    the model was not rebuilt while it was read (the stamp read after it is ``stamp``)."""
    global _shared
    po, co, rp = PackageOutcome, CohortOutcome, RecommendationParams
    population = {row[0]: (int(row[1]), int(row[2]), float(row[3]), float(row[4]))
                  for row in db.session.execute(
                      select(po.package_id, po.sessions, po.users, po.lift_sum,
                             po.adjusted_sum))}
    cohorts: dict = {}
    for goal, band, package_id, n, users, lift_sum, adjusted in db.session.execute(
            select(co.goal, co.band, co.package_id, co.sessions, co.users, co.lift_sum,
                   co.adjusted_sum).order_by(co.goal, co.band, co.package_id)):
        cohorts.setdefault(goal, []).append((band, package_id, int(n), int(users),
                                             float(lift_sum), float(adjusted)))
    row = db.session.execute(select(rp.k_user, rp.k_cohort, rp.k_package, rp.user_variance,
                                    _model_stamp()).where(rp.id == PARAMS_ID)).first()
    params = (DEFAULT_K, K_COHORT, DEFAULT_K, 1.0)
    after = None
    if row is not None:
        params = (float(row[0]), float(row[1]), float(row[2]), float(row[3] or 1.0))
        after = row[4]
    model = _SharedModel(stamp, params, population, cohorts)
    if stamp is not None and after == stamp:
        _shared = model
    return model


def _shared_model(stamp) -> _SharedModel:
    model = _shared
    if stamp is not None and model is not None and model.stamp == stamp:
        return model
    return _load_shared(stamp)


def _candidates(user_id: int, tier_name: str, now: datetime):
    """(the shared model, the user's starting-mood band, the published packages the user can
    play (tier or live assignment) with the population's and the user's own stored figures),
    in one query (three more when the model changed since this process last read it)."""
    p, own, pr = SoundPackage, UserPackageOutcome, UserOutcomeProfile
    levels = [level for level in PACKAGE_LEVELS if can_access_level(tier_name, level)]
    assigned = p.id.in_(live_package_ids(user_id, now))
    rows = db.session.execute(
        select(p.id, p.category, p.popularity, assigned,
               own.sessions, own.lift_sum, own.lift_sum - own.sessions * pr.bias,
               own.recent_negative, pr.band, _model_stamp())
        .outerjoin(own, and_(own.package_id == p.id, own.user_id == user_id))
        .outerjoin(pr, pr.user_id == user_id)
        .where(p.published.is_(True), p.archived_at.is_(None),
               or_(p.minimum_tier.in_(levels), assigned))).all()
    stamp = rows[0][9] if rows else None
    band = rows[0][8] if rows else None
    model = _shared_model(stamp)
    population = model.population
    candidates = []
    for (package_id, category, popularity, is_assigned, own_n, own_sum, own_adjusted,
         recent_negative, _band, _stamp) in rows:
        pop_n, pop_users, pop_sum, pop_adjusted = population.get(package_id, _NO_POPULATION)
        candidates.append(_Candidate(
            package_id, category, int(popularity or 0), bool(is_assigned),
            pop_n, pop_users, pop_sum, pop_adjusted, int(own_n or 0), float(own_sum or 0.0),
            float(own_adjusted or 0.0), bool(recent_negative)))
    return model, band, candidates


def _goals_of(preferences) -> dict[str, str]:
    """The user's goals by key (``models.user.goal_key``, as the cohorts are grouped), each
    with the name the reasons give it."""
    return goal_names((preferences or {}).get("goals") or [])


def _score(c: _Candidate, cohort, favorites: set[str], params) -> tuple:
    k_user, k_cohort, k_package, user_variance = params
    # The group figures without this user's own sessions in them, and only when enough
    # other users stand behind them.
    pop_others = c.pop_users - (1 if c.own_n else 0)
    pop_n = max(0, c.pop_n - c.own_n) if pop_others >= MIN_GROUP_USERS else 0
    pop_adjusted = c.pop_adjusted - c.own_adjusted if pop_n else 0.0
    pop_lift = pop_adjusted / (pop_n + k_package)
    prior, reliability = pop_lift, pop_n / (pop_n + k_package)
    cohort_view = None
    if cohort is not None:
        # The user is in every cohort row read for them (their goals, their band or any).
        goal, band, n, users, lift_sum, adjusted = cohort
        n_other = max(0, n - c.own_n) if users - (1 if c.own_n else 0) >= MIN_GROUP_USERS \
            else 0
        adjusted_other = adjusted - c.own_adjusted if n_other else 0.0
        lift_other = lift_sum - c.own_lift_sum if n_other else 0.0
        if n_other > 0:
            prior = (adjusted_other + k_cohort * pop_lift) / (n_other + k_cohort)
            reliability = n_other / (n_other + k_cohort)
            cohort_view = (goal, band, n_other, lift_other / n_other)
    expected = (c.own_adjusted + k_user * prior) / (c.own_n + k_user)
    prior_share = k_user / (c.own_n + k_user)
    confidence = 1.0 - prior_share * (1.0 - reliability / 2.0)
    exploration = 0.0
    if cohort_view is not None and prior > 0:
        exploration = EXPLORATION * reliability * prior_share * math.sqrt(user_variance)
    favorite = c.category in favorites
    score = expected + exploration + (FAVORITE_BONUS if favorite else 0.0)
    return score, expected, confidence, cohort_view, pop_n, pop_lift, favorite


def _reason(c: _Candidate, expected, cohort_view, pop_n, favorite,
            names: dict[str, str]) -> Reason:
    if c.own_n and c.own_lift_sum > 0 and expected > 0:
        mean = c.own_lift_sum / c.own_n
        return Reason(KIND_OWN, f"Lifted your mood by {_points(mean)} on average over "
                                f"{_sessions(c.own_n)}.")
    if cohort_view is not None and cohort_view[3] > 0:
        goal, band, n, mean = cohort_view
        alike = "" if band == BAND_ANY else " and a similar starting mood"
        return Reason(KIND_SIMILAR, f"People with your {names.get(goal, goal)} goal{alike} "
                                    f"felt {_points(mean)} better after it ({_sessions(n)}).")
    pop_mean = (c.pop_lift_sum - c.own_lift_sum) / pop_n if pop_n else 0.0
    if favorite:
        return Reason(KIND_FAVORITE, f"From {c.category}, one of your favourite categories; "
                                     f"played {_times(c.popularity)}.")
    if pop_n and pop_mean > 0:
        return Reason(KIND_POPULAR, f"Listeners felt {_points(pop_mean)} better after it on "
                                    f"average ({_sessions(pop_n)}).")
    return Reason(KIND_POPULAR, f"Popular with listeners: played {_times(c.popularity)}.")


def rank_packages(user_id: int, tier_name: str, preferences, limit: int | None = None,
                  now: datetime | None = None) -> list[tuple]:
    """The packages the user can play, best first (the first ``limit``, default all), as
    (candidate, score, expected, confidence, reason, assigned), from the stored model (one
    query while this process holds the current model's shared part)."""
    now = now or clock.now()
    model, band, candidates = _candidates(user_id, tier_name, now)
    params = model.params
    goals = _goals_of(preferences)
    cohorts = model.best_cohorts(sorted(goals), band) if goals else {}
    favorites = {c.lower() for c in (preferences or {}).get("favorite_categories") or []
                 if isinstance(c, str)}
    scored = []
    for c in candidates:
        figures = _score(c, cohorts.get(c.package_id), favorites, params)
        scored.append(((c.recent_negative, -round(figures[0], 6), -c.popularity, c.package_id),
                       c, figures))
    scored.sort(key=lambda item: item[0])
    out = []
    for _order, c, (score, expected, confidence, cohort_view, pop_n, _lift, favorite) in \
            scored[:limit]:
        out.append((c, round(score, 3), round(expected, 2),
                    round(min(1.0, max(0.0, confidence)), 3),
                    _reason(c, expected, cohort_view, pop_n, favorite, goals), c.assigned))
    return out


def recommendations_for(user_id: int, tier_name: str, preferences,
                        limit: int = DEFAULT_LIMIT,
                        now: datetime | None = None) -> list[Recommendation]:
    """The user's recommendations, best first, each with its catalog item (two queries while
    this process holds the current model's shared part, whatever the data size)."""
    top = rank_packages(user_id, tier_name, preferences, limit, now)
    if not top:
        return []
    p, lib = SoundPackage, UserSoundPackage
    in_library = exists().where(lib.user_id == user_id, lib.package_id == p.id)
    columns = {row[0]: row for row in db.session.execute(
        select(*(getattr(p, name) for name in _PACKAGE_COLUMNS), in_library)
        .where(p.id.in_([c.package_id for c, *_rest in top])))}
    # The catalog item from the columns read (a transient package: nothing more to load).
    return [Recommendation(PackageView.of(SoundPackage(**dict(zip(
        _PACKAGE_COLUMNS, columns[c.package_id][:-1], strict=True))), tier_name, assigned,
                                          bool(columns[c.package_id][-1])),
                           score, expected, confidence, reason)
            for c, score, expected, confidence, reason, assigned in top]
