"""catalog artwork and checkout return addresses

- sound_packages: ``image_path``, the package's artwork relative to the media root (like a
  track's ``media_path``); the API shows it as ``image_url``. Null: no artwork.
- user_subscriptions: ``checkout_success_url`` and ``checkout_cancel_url``, where the browser
  goes after paying or abandoning a pending checkout (the sandbox's checkout page reads them;
  Stripe is given them when the checkout is created).

Revision ID: 0012_catalog_shapes
Revises: 0006_day_rules
"""
import sqlalchemy as sa
from alembic import op

revision = "0012_catalog_shapes"
down_revision = "0011_recommendations"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def upgrade():
    schema = _schema()
    with op.batch_alter_table("sound_packages", schema=schema) as batch_op:
        batch_op.add_column(sa.Column("image_path", sa.String(length=512), nullable=True))
    with op.batch_alter_table("user_subscriptions", schema=schema) as batch_op:
        batch_op.add_column(sa.Column("checkout_success_url", sa.String(length=2048),
                                      nullable=True))
        batch_op.add_column(sa.Column("checkout_cancel_url", sa.String(length=2048),
                                      nullable=True))


def downgrade():
    schema = _schema()
    with op.batch_alter_table("user_subscriptions", schema=schema) as batch_op:
        batch_op.drop_column("checkout_cancel_url")
        batch_op.drop_column("checkout_success_url")
    with op.batch_alter_table("sound_packages", schema=schema) as batch_op:
        batch_op.drop_column("image_path")
