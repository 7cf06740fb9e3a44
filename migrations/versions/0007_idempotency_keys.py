"""retry-safe writes: idempotency keys

- ``idempotency_keys``: one row per ``Idempotency-Key`` a signed-in caller sent with a write:
  ``running`` while the first request with it runs, then ``done`` with its answer (status,
  body, the headers a replay repeats) until ``expires_at`` (24 h). The unique (user_id, key)
  pair decides which request runs; ``expires_at`` is indexed for the periodic sweep. A user's
  keys go with the user.

Revision ID: 0007_idempotency_keys
Revises: 0006_day_rules
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_idempotency_keys"
down_revision = "0006_day_rules"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    """``sonicus`` on PostgreSQL; SQLite has no schema."""
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def upgrade():
    schema = _schema()
    users = f"{schema}.users.id" if schema else "users.id"
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("response_status", sa.SmallInteger(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("response_headers", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], [users],
                                name=op.f("fk_idempotency_keys_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("user_id", "key", name=op.f("uq_idempotency_keys_user_id_key")),
        schema=schema,
    )
    with op.batch_alter_table("idempotency_keys", schema=schema) as batch_op:
        batch_op.create_index("ix_idempotency_keys_expires_at", ["expires_at"], unique=False)


def downgrade():
    schema = _schema()
    with op.batch_alter_table("idempotency_keys", schema=schema) as batch_op:
        batch_op.drop_index("ix_idempotency_keys_expires_at")
    op.drop_table("idempotency_keys", schema=schema)
