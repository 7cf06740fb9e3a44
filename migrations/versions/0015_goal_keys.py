"""cohorts grouped by goal key

- cohort_outcomes.goal: 40 -> 160 characters. Cohorts are grouped by a goal's key (NFKC and
  full case folding, ``models.user.goal_key``), which can be longer than the goal as typed
  (40 at most): "ß" folds to "ss". The rows are derived: the next rebuild of the
  recommendation model rewrites them all with keys.

Revision ID: 0015_goal_keys
Revises: 0014_day_settings_history
"""
import sqlalchemy as sa
from alembic import op

revision = "0015_goal_keys"
down_revision = "0014_day_settings_history"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def upgrade():
    with op.batch_alter_table("cohort_outcomes", schema=_schema()) as batch_op:
        batch_op.alter_column("goal", existing_type=sa.String(length=40),
                              type_=sa.String(length=160), existing_nullable=False)


def downgrade():
    op.execute(sa.text("DELETE FROM " + ("" if _schema() is None else "sonicus.")
                       + "cohort_outcomes"))  # rebuilt by the next run of the job
    with op.batch_alter_table("cohort_outcomes", schema=_schema()) as batch_op:
        batch_op.alter_column("goal", existing_type=sa.String(length=160),
                              type_=sa.String(length=40), existing_nullable=False)
