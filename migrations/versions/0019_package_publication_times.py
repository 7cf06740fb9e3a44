"""sound_packages: when a package last went into and out of the catalog by its flag

- sound_packages.published_at (nullable): when ``published`` last turned true; NULL: published
  since it was made (packages from before, and ones created published by a seed or a test).
- sound_packages.unpublished_at (nullable): when ``published`` last turned false; NULL: never
  unpublished since. Listening uploaded later (the offline sync) is judged by what the catalog
  offered at its start: an unpublished package keeps what was played before it left.

Revision ID: 0019_package_publication_times
Revises: 0018_claims_issued_at
"""
import sqlalchemy as sa
from alembic import op

revision = "0019_package_publication_times"
down_revision = "0018_claims_issued_at"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def upgrade():
    with op.batch_alter_table("sound_packages", schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column("published_at", sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column("unpublished_at", sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade():
    with op.batch_alter_table("sound_packages", schema=_schema()) as batch_op:
        batch_op.drop_column("unpublished_at")
        batch_op.drop_column("published_at")
