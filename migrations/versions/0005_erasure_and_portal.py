"""erasure and billing portal: tombstones, owed provider cancellations, provider state time

- ``erasure_tombstones``: one row per erased identity, salted hashes only (HMAC-SHA256 of the
  OIDC subject and of the normalised email) with ``trial_used``: the trial stays one per
  person after an erasure.
- ``owed_cancellations``: the outbox of provider subscriptions an erasure must cancel; inserted
  in the erasure's transaction, retried by a periodic job until the provider confirms.
- ``user_subscriptions.provider_state_at``: how recent the provider's subscription state
  mirrored in the row is (``customer.subscription.updated`` events older than it are stale).

Revision ID: 0005_erasure_and_portal
Revises: 0004_admin_short_search
"""
from alembic import op
import sqlalchemy as sa

revision = "0005_erasure_and_portal"
down_revision = "0004_admin_short_search"
branch_labels = None
depends_on = None


def _schema():
    """ALTER TABLE is not schema-translated on SQLite (which has no schema ``sonicus``)."""
    return "sonicus" if op.get_bind().dialect.name == "postgresql" else None


def upgrade():
    op.create_table(
        "erasure_tombstones",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_hash", sa.String(length=64), nullable=False),
        sa.Column("email_hash", sa.String(length=64), nullable=True),
        sa.Column("trial_used", sa.Boolean(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_tombstones")),
        schema="sonicus",
    )
    with op.batch_alter_table("erasure_tombstones", schema="sonicus") as batch_op:
        batch_op.create_index(batch_op.f("ix_erasure_tombstones_subject_hash"),
                              ["subject_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_erasure_tombstones_email_hash"),
                              ["email_hash"], unique=False)

    op.create_table(
        "owed_cancellations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=True),
        sa.Column("subscription_id", sa.String(length=255), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_owed_cancellations")),
        schema="sonicus",
    )
    with op.batch_alter_table("owed_cancellations", schema="sonicus") as batch_op:
        batch_op.create_index(batch_op.f("ix_owed_cancellations_customer_id"),
                              ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_owed_cancellations_subscription_id"),
                              ["subscription_id"], unique=False)
        batch_op.create_index("ix_owed_cancellations_due", ["done_at", "next_attempt_at"],
                              unique=False)

    op.add_column("user_subscriptions",
                  sa.Column("provider_state_at", sa.DateTime(timezone=True), nullable=True),
                  schema=_schema())


def downgrade():
    with op.batch_alter_table("user_subscriptions", schema=_schema()) as batch_op:
        batch_op.drop_column("provider_state_at")

    with op.batch_alter_table("owed_cancellations", schema="sonicus") as batch_op:
        batch_op.drop_index("ix_owed_cancellations_due")
        batch_op.drop_index(batch_op.f("ix_owed_cancellations_subscription_id"))
        batch_op.drop_index(batch_op.f("ix_owed_cancellations_customer_id"))
    op.drop_table("owed_cancellations", schema="sonicus")

    with op.batch_alter_table("erasure_tombstones", schema="sonicus") as batch_op:
        batch_op.drop_index(batch_op.f("ix_erasure_tombstones_email_hash"))
        batch_op.drop_index(batch_op.f("ix_erasure_tombstones_subject_hash"))
    op.drop_table("erasure_tombstones", schema="sonicus")
