"""subscription events: the payment ids a refund or a dispute is matched by, indexed

- ix_subscription_events_payment_charge, _payment_intent, _payment_invoice: expression
  indexes on ``details ->> 'charge_id'``, ``'payment_intent_id'`` and ``'invoice_id'`` (only
  the events that hold one). A dispute names only its charge, so the payment it is of was
  found by reading the details of every payment event of every user at each notice
  (``refunds.payment_owner``); it is an index lookup now. PostgreSQL only (the SQLite
  development database is small); written by hand (``migrations/env.py``).

Revision ID: 0022_payment_id_indexes
Revises: 0021_package_search_keys
"""
from alembic import op

revision = "0022_payment_id_indexes"
down_revision = "0021_package_search_keys"
branch_labels = None
depends_on = None

# as ``models.subscription.PAYMENT_ID_INDEXES`` is at this revision
INDEXES = {"ix_subscription_events_payment_charge": "charge_id",
           "ix_subscription_events_payment_intent": "payment_intent_id",
           "ix_subscription_events_payment_invoice": "invoice_id"}


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, key in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON sonicus.subscription_events "
                   f"((details ->> '{key}')) WHERE (details ->> '{key}') IS NOT NULL")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for name in INDEXES:
            op.execute(f"DROP INDEX IF EXISTS sonicus.{name}")
