"""verified_emails: every address an account has been verified with

- verified_emails (user_id, email_hash), primary key both, an index on email_hash:
  the salted hash (HMAC-SHA256 with SECRET_KEY, as the erasure tombstones' email_hash) of
  the address's ``models.user.email_key``, noted at sign-in whenever the token says the
  address is verified, and kept while the account lives. The free trial is one per person
  across every address an account has been verified with, not only its current one.
  Filled in here with the current address of each account verified now.

Revision ID: 0024_verified_emails
Revises: 0023_held_reversals
"""
import hashlib
import hmac
import unicodedata

import sqlalchemy as sa
from alembic import op
from flask import current_app

revision = "0024_verified_emails"
down_revision = "0023_held_reversals"
branch_labels = None
depends_on = None

_DOMAIN_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def _ref(schema: str | None, target: str) -> str:
    return f"{schema}.{target}" if schema else target


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


def upgrade():
    schema = _schema()
    op.create_table(
        "verified_emails",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], [_ref(schema, "users.id")],
                                name=op.f("fk_verified_emails_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "email_hash", name=op.f("pk_verified_emails")),
        schema=schema,
    )
    op.create_index(op.f("ix_verified_emails_email_hash"), "verified_emails", ["email_hash"],
                    unique=False, schema=schema)
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("email", sa.String),
                     sa.column("email_verified", sa.Boolean),
                     sa.column("created_at", sa.DateTime(timezone=True)), schema=schema)
    verified = sa.table("verified_emails", sa.column("user_id", sa.Integer),
                        sa.column("email_hash", sa.String),
                        sa.column("verified_at", sa.DateTime(timezone=True)), schema=schema)
    secret = current_app.config["SECRET_KEY"].encode()
    bind = op.get_bind()
    rows = []
    for user in bind.execute(sa.select(users.c.id, users.c.email, users.c.created_at)
                             .where(users.c.email_verified.is_(True))).all():
        key = _email_key(user.email)
        if key:
            rows.append({"user_id": user.id, "verified_at": user.created_at,
                         "email_hash": hmac.new(secret, f"email:{key}".encode(),
                                                hashlib.sha256).hexdigest()})
    if rows:
        bind.execute(verified.insert(), rows)


def downgrade():
    schema = _schema()
    op.drop_index(op.f("ix_verified_emails_email_hash"), table_name="verified_emails",
                  schema=schema)
    op.drop_table("verified_emails", schema=schema)
