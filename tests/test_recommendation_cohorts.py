"""Recommendations' cohorts ("people like you"): goals matched whatever their case and
Unicode form, and no one listener's outcome recoverable from the group figures a user can
be shown, however the cohorts nest or overlap."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sonicus import clock


def _today():
    return clock.local_day(clock.now(), "UTC", 0)


def _build(app):
    from sonicus.services.recommendation_model import rebuild_recommendation_model

    with app.app_context():
        return rebuild_recommendation_model()


def _recommendations(client, headers):
    res = client.get("/api/user/recommendations", headers=headers)
    assert res.status_code == 200, res.json
    return res.json["data"]


def _sessions(make_session, user, package, lifts, *, before=4):
    """One counting session per lift, oldest first, a day apart."""
    day = _today() - timedelta(days=len(lifts) + 1)
    for i, lift in enumerate(lifts):
        low = max(1, min(before, 10 - lift)) if lift >= 0 else max(before, 1 - lift)
        make_session(user, package, day + timedelta(days=i), minutes=10, mood_before=low,
                     mood_after=low + lift)


def _set_goals(client, headers, goals):
    res = client.put("/api/user/profile", headers=headers, json={"preferences": {"goals": goals}})
    assert res.status_code == 200, res.json
    return res.json["data"]["preferences"]["goals"]


@pytest.mark.parametrize(("theirs", "mine", "named"), [
    ("ΎΠΝΟΣ", "ύπνος", "ύπνος"),  # Greek capitals: final sigma
    ("ύπνος", "ΎΠΝΟΣ", "ύπνος"),
    ("iyi uyku", "İYİ UYKU", "iyi uyku"),  # Turkish dotted capital I
    ("ＳＬＥＥＰ", "sleep", "sleep"),  # full-width letters (NFKC)
    # capital sharp s; the key (41 characters: "ß" folds to "ss") is longer than the goal
    ("Süßes Schließen, Grüße, Maße, Fußbad", "SÜẞES SCHLIEẞEN, GRÜẞE, MAẞE, FUẞBAD",
     "süßes schließen, grüße, maße, fußbad"),
])
def test_a_goal_typed_in_another_case_or_form_finds_its_cohort(
        app, client, auth, make_user, make_package, make_session, theirs, mine, named):
    """Six listeners typed the goal one way, the asker another (capitals, a compatibility
    form): they are one cohort, and the asker's profile still shows what they typed."""
    deep = make_package("deep", popularity=1).id
    other = make_package("other", popularity=50).id
    for i in range(6):
        person = make_user(f"s{i}@example.com")
        assert _set_goals(client, auth(f"s{i}@example.com"), [theirs]) == [theirs]
        _sessions(make_session, person, deep, [3, 3, 3], before=3)
    me = make_user("asker@example.com")
    headers = auth("asker@example.com")
    assert _set_goals(client, headers, [mine]) == [mine]
    _sessions(make_session, me, other, [0], before=2)
    _build(app)

    items = _recommendations(client, headers)
    assert items[0]["package"]["id"] == deep
    assert items[0]["reason"] == {
        "kind": "similar_users",
        "text": f"People with your {named} goal and a similar starting mood felt 3.0 points "
                "better after it (18 sessions)."}
    profile = client.get("/api/user/profile", headers=headers).json["data"]
    assert profile["preferences"]["goals"] == [mine]


_FIGURE = re.compile(r"felt (\d+\.\d) points? better after it(?: on average)? \((\d+) sessions?\)")


def _figures_by_goals(client, headers, package_id, goal_choices):
    """{goals: (sessions, mean)}: the group figure the user is shown for the package with each
    choice of goals (None where none is shown)."""
    shown = {}
    for goals in goal_choices:
        _set_goals(client, headers, list(goals))
        item = next(i for i in _recommendations(client, headers)
                    if i["package"]["id"] == package_id)
        found = _FIGURE.search(item["reason"]["text"])
        shown[goals] = None if found is None else (int(found[2]), float(found[1]))
    return shown


def test_one_listener_cannot_be_worked_out_from_a_cohort_nested_in_another(
        app, client, auth, make_user, make_package, make_session):
    """Six listeners have the goals "sleep" and "rest", one more has "rest" alone, six have
    none. Each cohort and the population are of enough people and differ from the population
    by six or more; but "rest" is "sleep" plus one listener, so the two figures a user gets by
    changing their goals gave that listener's own lift by difference (7 x 2.9 - 6 x 2.0 =
    8). The "sleep" figure is not shown beside the "rest" one."""
    calm = make_package("calm", popularity=3).id
    for i in range(6):
        person = make_user(f"both{i}@example.com")
        _set_goals(client, auth(f"both{i}@example.com"), ["sleep", "rest"])
        _sessions(make_session, person, calm, [2])
    alone = make_user("alone@example.com")
    _set_goals(client, auth("alone@example.com"), ["Rest"])
    _sessions(make_session, alone, calm, [8])
    for i in range(6):
        _sessions(make_session, make_user(f"none{i}@example.com"), calm, [2])
    make_user("curious@example.com")
    headers = auth("curious@example.com")
    _build(app)

    shown = _figures_by_goals(client, headers, calm, [(), ("sleep",), ("rest",)])
    assert shown[()] == (13, 2.5)  # the population: 6 x 2 + 8 + 6 x 2 over 13
    figures = {figure for figure in shown.values() if figure is not None}
    for n1, mean1 in figures:
        for n2, mean2 in figures:
            if 0 < n1 - n2 < 5:  # one session each: n1 - n2 listeners
                recovered = (n1 * mean1 - n2 * mean2) / (n1 - n2)
                pytest.fail(f"{n1 - n2} listener(s) worked out by difference: {recovered:.1f}")


def test_one_listener_in_two_cohorts_cannot_be_worked_out_from_four_figures(
        app, client, auth, make_user, make_package, make_session):
    """One listener has the goals "sleep" and "focus"; five others have "sleep", five "focus",
    five "calm", and none of the figures differs from another by fewer than five listeners.
    Still, sleep + focus + calm - population is that one listener's lift: not every one of
    the four figures is shown."""
    rain = make_package("rain", popularity=3).id
    both = make_user("both@example.com")
    _set_goals(client, auth("both@example.com"), ["sleep", "focus"])
    _sessions(make_session, both, rain, [8])
    for goal in ("sleep", "focus", "calm"):
        for i in range(5):
            person = make_user(f"{goal}{i}@example.com")
            _set_goals(client, auth(f"{goal}{i}@example.com"), [goal])
            _sessions(make_session, person, rain, [2])
    make_user("curious@example.com")
    headers = auth("curious@example.com")
    _build(app)

    shown = _figures_by_goals(client, headers, rain,
                              [(), ("sleep",), ("focus",), ("calm",)])
    assert shown[()] == (16, 2.4)
    cohorts = [("sleep",), ("focus",), ("calm",)]  # a cohort not shown: the population's
    if all(shown[goals] != shown[()] for goals in cohorts):
        total = {goals: n * mean for goals, (n, mean) in shown.items()}
        recovered = (total[("sleep",)] + total[("focus",)] + total[("calm",)] - total[()])
        pytest.fail(f"one listener worked out from four figures: {recovered:.1f}")


_BANDS = ("low", "mid", "high")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_BANDS),
                          st.frozensets(st.sampled_from(("a", "b", "c")))),
                min_size=1, max_size=40))
def test_no_sum_or_difference_of_the_figures_shown_singles_out_a_few_listeners(people):
    """Any package's listeners (a band and a set of goals each): of the cohort rows, those
    kept, with the population's figure, never add up or difference (up to four figures) to
    the sum of one to five listeners, unless every figure is the population's."""
    from sonicus.services.recommendation_cohorts import MIN_GROUP_USERS, shown_rows

    numbers = {goals: i for i, goals in enumerate({g for _b, g in people if g}, start=1)}
    listeners = Counter((band, numbers.get(goals)) for band, goals in people)
    goal_sets = {i: goals for goals, i in numbers.items()}

    def members(goal, band):
        return frozenset(i for i, (own_band, goals) in enumerate(people)
                         if goal in goals and band in ("any", own_band))

    rows = [(goal, band, len(members(goal, band))) for goal in "abc"
            for band in ("any", *_BANDS)]
    rows = [row for row in rows if row[2] >= MIN_GROUP_USERS]  # the job drops the others first
    shown = shown_rows(rows, listeners, goal_sets)
    everyone = frozenset(range(len(people)))
    figures = list({everyone, *(members(goal, band) for goal, band in shown)})
    for size in range(1, min(4, len(figures)) + 1):
        for chosen in itertools.combinations(figures, size):
            for signs in itertools.product((1, -1), repeat=size):
                weights = Counter()
                for sign, figure in zip(signs, chosen, strict=True):
                    for person in figure:
                        weights[person] += sign
                singled = {person for person, weight in weights.items() if weight}
                assert not 0 < len(singled) <= MIN_GROUP_USERS or len(figures) == 1, \
                    (shown, sorted(singled))
