"""admin user search: trigram indexes for substring search on email and display name

The admin user list searches ``lower(email) LIKE '%q%' OR lower(display_name) LIKE '%q%'``.
On PostgreSQL two GIN trigram indexes serve that (pg_trgm is a trusted extension: a database
owner may create it). SQLite has no trigram indexes: nothing to do there, the search scans.

Revision ID: 0002_admin_user_search
Revises: 0001
"""
from alembic import op

revision = "0002_admin_user_search"
down_revision = "0001"
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
    op.execute("CREATE INDEX IF NOT EXISTS ix_users_email_trgm "
               f"ON sonicus.users USING gin (lower(email) {ops})")
    op.execute("CREATE INDEX IF NOT EXISTS ix_users_display_name_trgm "
               f"ON sonicus.users USING gin (lower(display_name) {ops})")


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS sonicus.ix_users_display_name_trgm")
    op.execute("DROP INDEX IF EXISTS sonicus.ix_users_email_trgm")
    # pg_trgm stays: other schemas in the database may use it.
