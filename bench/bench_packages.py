"""GET /api/packages latency with 10,000 packages, against a real gunicorn + PostgreSQL.

    .venv/bin/python bench/bench_packages.py [--packages 10000] [--requests 500] [--clients 20]
        [--database postgresql://postgres@127.0.0.1:5432/bench_catalog]

Migrates the bench database from scratch, inserts N published packages (2-3 tracks each, all
tiers and categories, realistic titles and descriptions), starts gunicorn (gthread,
--no-control-socket) on a free port and measures, for each query shape, one client in
sequence and ``--clients`` concurrent clients. Also prints PostgreSQL's own execution time
(EXPLAIN ANALYZE) of the list and count queries for the text search, the slowest shape.
``--no-search-index`` drops the trigram indexes of migration 0002 to compare.
"""

from __future__ import annotations

import argparse
import os
import random

from bench_sessions import (
    DEFAULT_DB,
    Server,
    make_bench_app,
    mint_tokens,
    reset_database,
    run_load,
    summarise,
)

CATEGORIES = ("sleep", "focus", "relaxation", "meditation", "anxiety", "energy", "nature",
              "stress")
LEVELS = ("public", "premium", "pro_exclusive")
WORDS = ("rain", "ocean", "forest", "breath", "drift", "calm", "deep", "night", "morning",
         "stream", "wind", "bowls", "piano", "noise", "waves", "focus", "flow", "dream")

SHAPES = {
    "default page": "/api/packages",
    "category=sleep": "/api/packages?category=sleep",
    "q=ocean (title/description)": "/api/packages?q=ocean",
    "accessible=true": "/api/packages?accessible=true",
    "page=400 (deep)": "/api/packages?page=400",
    "per_page=100": "/api/packages?per_page=100",
}


def insert_packages(app, count: int, drop_search_index: bool = False) -> None:
    from sqlalchemy import insert, select

    from sonicus.extensions import db
    from sonicus.models import SoundPackage, Track

    rng = random.Random(7)
    with app.app_context():
        rows = []
        for i in range(count):
            a, b = rng.sample(WORDS, 2)
            lengths = [rng.randint(300, 1800) for _ in range(rng.randint(2, 3))]
            rows.append({"slug": f"{a}-{b}-{i}", "title": f"{a.title()} {b.title()} {i}",
                         "description": f"A {a} and {b} soundscape for "
                                        f"{rng.choice(CATEGORIES)}, number {i}.",
                         "category": CATEGORIES[i % len(CATEGORIES)],
                         "minimum_tier": LEVELS[i % 3], "published": True,
                         "duration_seconds": sum(lengths), "track_count": len(lengths),
                         "popularity": rng.randint(0, 5000), "_lengths": lengths})
        lengths = {r["slug"]: r.pop("_lengths") for r in rows}
        db.session.execute(insert(SoundPackage), rows)
        ids = dict(db.session.execute(select(SoundPackage.slug, SoundPackage.id)).all())
        tracks = [{"package_id": ids[slug], "position": p, "title": f"Part {p + 1}",
                   "duration_seconds": length, "media_path": f"bench/{slug}/{p + 1}.mp3"}
                  for slug, ls in lengths.items() for p, length in enumerate(ls)]
        db.session.execute(insert(Track), tracks)
        db.session.commit()
        if drop_search_index:
            db.session.execute(db.text(
                "DROP INDEX IF EXISTS sonicus.ix_sound_packages_title_trgm, "
                "sonicus.ix_sound_packages_description_trgm"))
            db.session.commit()
        # the steady state of a live catalog: statistics fresh, GIN pending lists merged
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(db.text("VACUUM ANALYZE sonicus.sound_packages"))
            conn.execute(db.text("VACUUM ANALYZE sonicus.tracks"))
        db.session.remove()


def explain(app) -> None:
    from sqlalchemy import text

    from sonicus.extensions import db

    queries = {
        "list q=ocean": "SELECT * FROM sonicus.sound_packages WHERE published AND archived_at "
                        "IS NULL AND (title ILIKE '%ocean%' OR description ILIKE '%ocean%') "
                        "ORDER BY popularity DESC, id LIMIT 20",
        "count q=ocean": "SELECT count(*) FROM sonicus.sound_packages WHERE published AND "
                         "archived_at IS NULL AND (title ILIKE '%ocean%' OR description "
                         "ILIKE '%ocean%')",
        "list default": "SELECT * FROM sonicus.sound_packages WHERE published AND archived_at "
                        "IS NULL ORDER BY popularity DESC, id LIMIT 20",
    }
    with app.app_context():
        for label, sql in queries.items():
            plan = db.session.execute(text("EXPLAIN ANALYZE " + sql)).scalars().all()
            timing = [line for line in plan if "Execution Time" in line]
            print(f"  postgres {label}: {timing[0].strip() if timing else plan[-1]}")
        db.session.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default=DEFAULT_DB)
    parser.add_argument("--packages", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--no-search-index", action="store_true",
                        help="drop the trigram indexes of migration 0002 (for comparison)")
    args = parser.parse_args()

    app = make_bench_app(args.database)
    reset_database(app, args.database)
    insert_packages(app, args.packages, args.no_search_index)
    token = mint_tokens(app, ["catalog-bench@example.com"], "premium")[0]
    explain(app)

    server = Server(args.database, args.workers, args.threads)
    try:
        run_load(args.clients, [("GET", server.url + "/api/packages", None, token)] * 100)
        for label, path in SHAPES.items():
            jobs = [("GET", server.url + path, None, token)] * args.requests
            summarise(f"GET {label}, 1 client", *run_load(1, jobs))
            summarise(f"GET {label}, {args.clients} clients", *run_load(args.clients, jobs))
    finally:
        server.stop()
    print(f"{args.packages} packages{' (no trigram index)' if args.no_search_index else ''}; "
          f"server: gunicorn -k gthread --workers {args.workers} "
          f"--threads {args.threads}; machine: {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
