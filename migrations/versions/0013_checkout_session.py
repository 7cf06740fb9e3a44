"""checkout sessions expired when replaced

- user_subscriptions: ``checkout_session_id``, the provider's id of the pending checkout (a
  Stripe Checkout Session), so that a checkout replaced by another, or given up, is expired
  at the provider and can no longer be paid. Null: no pending checkout, or a provider (the
  sandbox) whose checkout page reads the row itself.

Revision ID: 0013_checkout_session
Revises: 0012_catalog_shapes
"""
import sqlalchemy as sa
from alembic import op

revision = "0013_checkout_session"
down_revision = "0012_catalog_shapes"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def upgrade():
    with op.batch_alter_table("user_subscriptions", schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column("checkout_session_id", sa.String(length=255),
                                      nullable=True))


def downgrade():
    with op.batch_alter_table("user_subscriptions", schema=_schema()) as batch_op:
        batch_op.drop_column("checkout_session_id")
