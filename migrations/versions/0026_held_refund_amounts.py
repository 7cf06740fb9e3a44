"""held_reversals: a held refund's own amount and id

- held_reversals.refund_cents (integer, null): the money the refund itself gave back, as its
  notice said (the provider's running total for the charge less the total before it), null
  when the notice did not say; the history shows it when the payment's notice takes the
  refund in.
- held_reversals.refund_id (varchar 255, null): the provider's id of the refund, where said.

Revision ID: 0026_held_refund_amounts
Revises: 0025_user_email_keys
"""
import sqlalchemy as sa
from alembic import op

revision = "0026_held_refund_amounts"
down_revision = "0025_user_email_keys"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def upgrade():
    with op.batch_alter_table("held_reversals", schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column("refund_cents", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("refund_id", sa.String(length=255), nullable=True))


def downgrade():
    with op.batch_alter_table("held_reversals", schema=_schema()) as batch_op:
        batch_op.drop_column("refund_id")
        batch_op.drop_column("refund_cents")
