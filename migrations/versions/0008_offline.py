"""offline listening: client ids, resume positions, abandoned sessions, offline licences

- user_sessions: ``client_id`` (the client's uuid, unique per user: a start or an offline upload
  sent again finds the same session), ``position_seconds`` and ``position_updated_at`` (where to
  resume), ``last_heartbeat_at``. Sessions the stale sweep closed with nothing listened are
  marked ``end_reason = 'abandoned'`` (never heartbeated: analytics leave them out).
- offline_licences: one per user and package, ``granted_at``, ``expires_at``, ``ended_at``.

Revision ID: 0008_offline
Revises: 0006_day_rules
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_offline"
down_revision = "0007_idempotency_keys"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def _ref(schema: str | None, column: str) -> str:
    return f"{schema}.{column}" if schema else column


def upgrade():
    schema = _schema()
    with op.batch_alter_table("user_sessions", schema=schema) as batch_op:
        batch_op.add_column(sa.Column("client_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("position_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("position_updated_at", sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column("last_heartbeat_at", sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.create_index("ix_user_sessions_user_id_position_updated_at",
                              ["user_id", "position_updated_at"], unique=False)
        batch_op.create_unique_constraint("uq_user_sessions_user_id_client_id",
                                          ["user_id", "client_id"])

    op.create_table(
        "offline_licences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("package_id", sa.Integer(), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["package_id"], [_ref(schema, "sound_packages.id")],
                                name=op.f("fk_offline_licences_package_id_sound_packages"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], [_ref(schema, "users.id")],
                                name=op.f("fk_offline_licences_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_offline_licences")),
        sa.UniqueConstraint("user_id", "package_id",
                            name=op.f("uq_offline_licences_user_id_package_id")),
        schema=schema,
    )

    sessions = sa.table("user_sessions", sa.column("status"), sa.column("end_reason"),
                        sa.column("listened_seconds"), schema=schema)
    op.execute(sessions.update()
               .where(sessions.c.status == "ended", sessions.c.end_reason == "expired",
                      sessions.c.listened_seconds == 0)
               .values(end_reason="abandoned"))


def downgrade():
    schema = _schema()
    op.drop_table("offline_licences", schema=schema)
    sessions = sa.table("user_sessions", sa.column("end_reason"), schema=schema)
    op.execute(sessions.update().where(sessions.c.end_reason == "abandoned")
               .values(end_reason="expired"))
    with op.batch_alter_table("user_sessions", schema=schema) as batch_op:
        batch_op.drop_constraint("uq_user_sessions_user_id_client_id", type_="unique")
        batch_op.drop_index("ix_user_sessions_user_id_position_updated_at")
        batch_op.drop_column("last_heartbeat_at")
        batch_op.drop_column("position_updated_at")
        batch_op.drop_column("position_seconds")
        batch_op.drop_column("client_id")
