"""admin user search: prefix indexes for queries shorter than a trigram

A search of one or two characters matches the start of the email or of the display name
(``lower(email) LIKE 'q%' OR lower(display_name) LIKE 'q%'``); trigram indexes cannot serve
it. Two btree indexes with ``text_pattern_ops`` (LIKE prefixes under any collation) let the
planner answer with a BitmapOr instead of scanning every user. SQLite: nothing to do.

Revision ID: 0004_admin_short_search
Revises: 0003_admin_user_search
"""
from alembic import op

revision = "0004_admin_short_search"
down_revision = "0003_admin_user_search"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_users_email_prefix": "lower(email) text_pattern_ops",
    "ix_users_display_name_prefix": "lower(display_name) text_pattern_ops",
}


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, expression in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON sonicus.users ({expression})")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS sonicus.{name}")
