"""subscription events: the payment ids a refund or a dispute is matched by, indexed

- ix_subscription_events_payment_charge, _payment_intent, _payment_invoice: expression
  indexes on ``details ->> 'charge_id'``, ``'payment_intent_id'`` and ``'invoice_id'`` (only
  the events that hold one). A dispute names only its charge, so the payment it is of was
  found by reading the details of every payment event of every user at each notice
  (``refunds.payment_owner``); it is an index lookup now. PostgreSQL only (the SQLite
  development database is small); written by hand (``migrations/env.py``). Built
  CONCURRENTLY outside the migration's transaction: payments and refunds are written to the
  table while they are built.

Revision ID: 0022_payment_id_indexes
Revises: 0021_package_search_keys
"""
import sqlalchemy as sa
from alembic import op

revision = "0022_payment_id_indexes"
down_revision = "0021_package_search_keys"
branch_labels = None
depends_on = None

# as ``models.subscription.PAYMENT_ID_INDEXES`` is at this revision
INDEXES = {"ix_subscription_events_payment_charge": "charge_id",
           "ix_subscription_events_payment_intent": "payment_intent_id",
           "ix_subscription_events_payment_invoice": "invoice_id"}


def _build_concurrently(name: str, statement: str) -> None:
    """Build an index on a big table without locking its writers out (PostgreSQL): outside the
    migration's transaction, CONCURRENTLY; an invalid one left by a build that failed is
    dropped first (IF NOT EXISTS would keep it as it is)."""
    with op.get_context().autocommit_block():
        invalid = op.get_bind().execute(sa.text(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'sonicus' AND c.relname = :name AND NOT i.indisvalid"),
            {"name": name}).first()
        if invalid is not None:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS sonicus.{name}")
        op.execute(statement)


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, key in INDEXES.items():
        _build_concurrently(name, f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} "
                                  f"ON sonicus.subscription_events ((details ->> '{key}')) "
                                  f"WHERE (details ->> '{key}') IS NOT NULL")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for name in INDEXES:
            op.execute(f"DROP INDEX IF EXISTS sonicus.{name}")
