"""admin user search: a trigram index for substring search on email and display name

The admin user list searches one expression, the email and the display name joined by a
newline (which a search text may not contain): ``lower(email || E'\\n' ||
coalesce(display_name, '')) LIKE '%q%'``. On PostgreSQL one GIN trigram index serves it
(pg_trgm is a trusted extension: a database owner may create it); one index over the joined
text lets the planner count matches with a single bitmap scan. SQLite has no trigram indexes:
nothing to do there, the search scans.

Revision ID: 0003_admin_user_search
Revises: 0002_catalog
"""
from alembic import op

revision = "0003_admin_user_search"
down_revision = "0002_catalog"
branch_labels = None
depends_on = None


def _trgm_schema(bind) -> str:
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    row = bind.exec_driver_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'").first()
    return row[0]


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    ops = f'"{_trgm_schema(bind)}".gin_trgm_ops'
    op.execute("CREATE INDEX IF NOT EXISTS ix_users_search_trgm ON sonicus.users USING gin "
               f"(lower(email || E'\\n' || coalesce(display_name, '')) {ops})")


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS sonicus.ix_users_search_trgm")
    # pg_trgm stays: other schemas in the database may use it.
