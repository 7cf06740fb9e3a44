"""the key of an erasure outlives the account

- idempotency_keys.user_id becomes nullable; new column ``subject_hash`` (64, nullable) with a
  unique (subject_hash, key) pair. An erasure sent with an ``Idempotency-Key`` keeps its own
  key's row past the account (``user_id`` NULL), under the tombstone's salted hash of the OIDC
  subject, so that its retry replays the answer instead of signing up a new account and erasing
  it. The row holds nothing the tombstone does not (the hash), the client's key, the request's
  fingerprint and the answer; it expires with the key (24 h) like any other.

The downgrade deletes such rows (they belong to no user) before restoring NOT NULL.

Revision ID: 0017_erasure_keys
Revises: 0016_push_endpoint_spelling
"""
import sqlalchemy as sa
from alembic import op

revision = "0017_erasure_keys"
down_revision = "0016_push_endpoint_spelling"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def upgrade():
    with op.batch_alter_table("idempotency_keys", schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column("subject_hash", sa.String(length=64), nullable=True))
        batch_op.alter_column("user_id", existing_type=sa.Integer(), nullable=True)
        batch_op.create_unique_constraint("uq_idempotency_keys_subject_hash_key",
                                          ["subject_hash", "key"])


def downgrade():
    keys = sa.table("idempotency_keys", sa.column("user_id", sa.Integer), schema=_schema())
    op.get_bind().execute(sa.delete(keys).where(keys.c.user_id.is_(None)))
    with op.batch_alter_table("idempotency_keys", schema=_schema()) as batch_op:
        batch_op.drop_constraint("uq_idempotency_keys_subject_hash_key", type_="unique")
        batch_op.alter_column("user_id", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column("subject_hash")
