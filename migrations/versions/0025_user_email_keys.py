"""users.email_key: the email in the one form addresses are compared in

- users.email_key (text, not null): ``models.user.email_key`` of the email (stripped, NFKC,
  case folded, IDN domain labels in Unicode), kept by the model with every change of the
  email. The operator's lookup by email compares it, and the admin search looks in it too,
  so another case, Unicode form or IDN spelling of an address finds it. Filled in here.
- ix_users_email_key (btree, text_pattern_ops: equality and LIKE prefixes), and on
  PostgreSQL with pg_trgm a GIN trigram index for substrings (skipped with a warning where
  the extension is not there, as 0021). On PostgreSQL both are built CONCURRENTLY outside the
  migration's transaction, so sign-ins and profile changes go on while they are built.

Revision ID: 0025_user_email_keys
Revises: 0024_verified_emails
"""
import logging
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0025_user_email_keys"
down_revision = "0024_verified_emails"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
_DOMAIN_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def _unicode_key(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).replace("\u0130", "i").casefold()
    return unicodedata.normalize("NFKC", folded)


def _label(label: str) -> str:
    if label.startswith("xn--"):
        try:
            return _unicode_key(label[4:].encode("ascii").decode("punycode"))
        except (UnicodeError, ValueError):
            return label
    return label


def _email_key(email) -> str:
    """``models.user.email_key`` as it is at this revision."""
    if not isinstance(email, str):
        return ""
    key = _unicode_key(email.strip())
    local, at, domain = key.rpartition("@")
    if not at:
        return key
    labels = [_label(label) for label in domain.translate(_DOMAIN_DOTS).split(".")]
    return f"{local}@{'.'.join(labels).rstrip('.')}"


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
    schema = _schema()
    if op.get_bind().dialect.name == "postgresql":
        # IF NOT EXISTS: a rerun after an index build failed finds the column committed
        # (the builds run outside the transaction) and the version still at 0024.
        op.execute("ALTER TABLE sonicus.users "
                   "ADD COLUMN IF NOT EXISTS email_key text NOT NULL DEFAULT ''")
    else:
        with op.batch_alter_table("users", schema=schema) as batch_op:
            batch_op.add_column(sa.Column("email_key", sa.Text(), nullable=False,
                                          server_default=""))
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("email", sa.String),
                     sa.column("email_key", sa.Text), schema=schema)
    bind = op.get_bind()
    for row in bind.execute(sa.select(users.c.id, users.c.email)).all():
        bind.execute(users.update().where(users.c.id == row.id)
                     .values(email_key=_email_key(row.email)))
    if bind.dialect.name != "postgresql":
        op.create_index("ix_users_email_key", "users", ["email_key"], unique=False,
                        schema=schema)
        return
    _build_concurrently("ix_users_email_key", "CREATE INDEX CONCURRENTLY IF NOT EXISTS "
                        "ix_users_email_key ON sonicus.users (email_key text_pattern_ops)")
    trgm = bind.execute(sa.text(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'")).scalar_one_or_none()
    if trgm is None:
        log.warning("pg_trgm unavailable: the email key's trigram index is skipped")
        return
    _build_concurrently("ix_users_email_key_trgm",
                        f'CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_users_email_key_trgm '
                        f'ON sonicus.users USING gin (email_key "{trgm}".gin_trgm_ops)')


def downgrade():
    schema = _schema()
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS sonicus.ix_users_email_key_trgm")
    op.drop_index("ix_users_email_key", table_name="users", schema=schema)
    with op.batch_alter_table("users", schema=schema) as batch_op:
        batch_op.drop_column("email_key")
