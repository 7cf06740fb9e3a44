"""held_reversals: refunds and disputes of a charge no account could be tied to yet

- held_reversals: a refund or a dispute whose payment's notice has not arrived (a new
  customer's first charge, or a dispute, which names only its charge): the provider's ids of
  the payment (each indexed), whether it was given back in full, the amounts. The payment,
  when its notice comes, takes it into the user's history and grants nothing if it was given
  back in full; such a refund used to be dropped ("unknown customer") and the payment then
  granted the month.

Revision ID: 0023_held_reversals
Revises: 0022_payment_id_indexes
"""
import sqlalchemy as sa
from alembic import op

revision = "0023_held_reversals"
down_revision = "0022_payment_id_indexes"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "held_reversals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("full", sa.Boolean(), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=True),
        sa.Column("refunded_cents", sa.Integer(), nullable=True),
        sa.Column("charge_id", sa.String(length=255), nullable=True),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("invoice_id", sa.String(length=255), nullable=True),
        sa.Column("provider_created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_held_reversals")),
        schema="sonicus",
    )
    with op.batch_alter_table("held_reversals", schema="sonicus") as batch_op:
        for column in ("charge_id", "payment_intent_id", "invoice_id"):
            batch_op.create_index(f"ix_held_reversals_{column}", [column], unique=False)


def downgrade():
    op.drop_table("held_reversals", schema="sonicus")
