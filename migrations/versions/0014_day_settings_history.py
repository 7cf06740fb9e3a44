"""day settings remembered before the prior ones

- users: ``earlier_day_settings``, the day settings in force before ``prior_timezone`` and
  ``prior_day_start_hour``, oldest first, each with the instant it ended (JSON, ``[]`` for
  every existing user: nothing earlier was remembered). ``clock.day_settings_at`` reads them
  for moments before the prior settings began, so offline listening uploaded after two
  changes of time zone counts on the day it was listened on.

Revision ID: 0014_day_settings_history
Revises: 0013_checkout_session
"""
import sqlalchemy as sa
from alembic import op

revision = "0014_day_settings_history"
down_revision = "0013_checkout_session"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def upgrade():
    with op.batch_alter_table("users", schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column("earlier_day_settings", sa.JSON(), nullable=False,
                                      server_default="[]"))


def downgrade():
    with op.batch_alter_table("users", schema=_schema()) as batch_op:
        batch_op.drop_column("earlier_day_settings")
