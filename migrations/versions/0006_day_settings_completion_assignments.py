"""day settings that take effect at the day's boundary, completion by the server, assignments

- users: ``prior_timezone``, ``prior_day_start_hour`` and ``day_settings_effective_at``. A change
  of timezone or day start hour is shown at once and takes effect at the next boundary of the
  day in force; until then the prior settings stay in force. Existing users have none pending.

Revision ID: 0006_day_settings_completion_assignments
Revises: 0004_admin_short_search
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_day_settings_completion_assignments"
down_revision = "0004_admin_short_search"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    """``sonicus`` on PostgreSQL. On SQLite there is no schema: the app maps it away for the
    statements it builds from tables, but ALTER TABLE names the table as given."""
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def upgrade():
    schema = _schema()
    if op.get_bind().dialect.name == "postgresql":
        # This revision's id is longer than alembic's default VARCHAR(32) version column;
        # the column is widened before alembic records it (SQLite does not enforce lengths).
        op.execute("ALTER TABLE sonicus.alembic_version "
                   "ALTER COLUMN version_num TYPE VARCHAR(64)")
    with op.batch_alter_table("users", schema=schema) as batch_op:
        batch_op.add_column(sa.Column("prior_timezone", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("prior_day_start_hour", sa.SmallInteger(), nullable=True))
        batch_op.add_column(sa.Column("day_settings_effective_at", sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade():
    schema = _schema()
    with op.batch_alter_table("users", schema=schema) as batch_op:
        batch_op.drop_column("day_settings_effective_at")
        batch_op.drop_column("prior_day_start_hour")
        batch_op.drop_column("prior_timezone")
    # alembic_version.version_num stays VARCHAR(64): wider does no harm.
