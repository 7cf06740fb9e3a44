"""recommendations from measured mood outcomes

The tables of the recommendation model (sonicus/models/recommendations.py), rebuilt by a
periodic job from the sessions that count: platform parameters, per-package and per-cohort
sums, each user's bias and band, and each user's sums per package. Empty until the job runs.
The per-user tables have no foreign keys (derived rows rewritten in bulk; erasure deletes a
user's rows itself).

Revision ID: 0011_recommendations
Revises: 0006_day_rules
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_recommendations"
down_revision = "0009_reminders"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def _ref(schema: str | None, column: str) -> str:
    return f"{schema}.{column}" if schema else column


def _package_fk(schema, table):
    return sa.ForeignKeyConstraint(["package_id"], [_ref(schema, "sound_packages.id")],
                                   name=op.f(f"fk_{table}_package_id_sound_packages"),
                                   ondelete="CASCADE")


def upgrade():
    schema = _schema()
    op.create_table(
        "recommendation_params",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("mean_lift", sa.Float(), nullable=False),
        sa.Column("noise_variance", sa.Float(), nullable=False),
        sa.Column("user_variance", sa.Float(), nullable=False),
        sa.Column("k_user", sa.Float(), nullable=False),
        sa.Column("k_cohort", sa.Float(), nullable=False),
        sa.Column("k_package", sa.Float(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recommendation_params")),
        schema=schema,
    )
    op.create_table(
        "package_outcomes",
        sa.Column("package_id", sa.Integer(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("users", sa.Integer(), nullable=False),
        sa.Column("lift_sum", sa.Float(), nullable=False),
        sa.Column("adjusted_sum", sa.Float(), nullable=False),
        _package_fk(schema, "package_outcomes"),
        sa.PrimaryKeyConstraint("package_id", name=op.f("pk_package_outcomes")),
        schema=schema,
    )
    op.create_table(
        "cohort_outcomes",
        sa.Column("goal", sa.String(length=40), nullable=False),
        sa.Column("band", sa.String(length=8), nullable=False),
        sa.Column("package_id", sa.Integer(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("users", sa.Integer(), nullable=False),
        sa.Column("lift_sum", sa.Float(), nullable=False),
        sa.Column("adjusted_sum", sa.Float(), nullable=False),
        _package_fk(schema, "cohort_outcomes"),
        sa.PrimaryKeyConstraint("goal", "band", "package_id", name=op.f("pk_cohort_outcomes")),
        schema=schema,
    )
    op.create_table(
        "user_outcome_profiles",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("bias", sa.Float(), nullable=False),
        sa.Column("band", sa.String(length=8), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_outcome_profiles")),
        schema=schema,
    )
    op.create_table(
        "user_package_outcomes",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("package_id", sa.Integer(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("lift_sum", sa.Float(), nullable=False),
        sa.Column("lift_squares", sa.Float(), nullable=False),
        sa.Column("mood_before_sum", sa.Float(), nullable=False),
        sa.Column("recent_negative", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "package_id", name=op.f("pk_user_package_outcomes")),
        schema=schema,
    )
    with op.batch_alter_table("user_package_outcomes", schema=schema) as batch_op:
        batch_op.create_index("ix_user_package_outcomes_package_id", ["package_id"],
                              unique=False)


def downgrade():
    schema = _schema()
    with op.batch_alter_table("user_package_outcomes", schema=schema) as batch_op:
        batch_op.drop_index("ix_user_package_outcomes_package_id")
    for table in ("user_package_outcomes", "user_outcome_profiles", "cohort_outcomes",
                  "package_outcomes", "recommendation_params"):
        op.drop_table(table, schema=schema)
