"""users: when the token whose claims were applied last was issued

- users.claims_issued_at (nullable): the ``iat`` of the token whose claims (email, name,
  groups → role) the account was last synced from. A token issued earlier does not write its
  claims back: an admin removed from the admin group stays removed once a token of the new
  groups was seen, whichever older token still within its lifetime comes next. NULL (accounts
  from before, tokens without ``iat``): the next token's claims apply, as before.

Revision ID: 0018_claims_issued_at
Revises: 0017_erasure_keys
"""
import sqlalchemy as sa
from alembic import op

revision = "0018_claims_issued_at"
down_revision = "0017_erasure_keys"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def upgrade():
    with op.batch_alter_table("users", schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column("claims_issued_at", sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade():
    with op.batch_alter_table("users", schema=_schema()) as batch_op:
        batch_op.drop_column("claims_issued_at")
