"""reminders: preferences, push subscriptions (one per device), one delivery per user day

- reminder_preferences: one row per user who set reminders (no row: disabled defaults);
  times in minutes after local midnight, ``remind_minute`` null for "smart" (computed into
  ``smart_minute``), weekdays as a bit mask (Monday = bit 0).
- push_subscriptions: a browser's W3C PushSubscription (endpoint unique, RFC 8291 keys).
- reminder_deliveries: the reminder of one (user, user day); its unique key decides which
  worker sends it.

Revision ID: 0009_reminders
Revises: 0006_day_rules
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_reminders"
down_revision = "0008_offline"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def _ref(schema: str | None, column: str) -> str:
    return f"{schema}.{column}" if schema else column


def upgrade():
    schema = _schema()
    op.create_table(
        "reminder_preferences",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("remind_minute", sa.SmallInteger(), nullable=True),
        sa.Column("days_mask", sa.SmallInteger(), nullable=False),
        sa.Column("quiet_start_minute", sa.SmallInteger(), nullable=True),
        sa.Column("quiet_end_minute", sa.SmallInteger(), nullable=True),
        sa.Column("weekly_recap", sa.Boolean(), nullable=False),
        sa.Column("smart_minute", sa.SmallInteger(), nullable=True),
        sa.Column("smart_computed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], [_ref(schema, "users.id")],
                                name=op.f("fk_reminder_preferences_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_reminder_preferences")),
        schema=schema,
    )
    enabled = sa.text("enabled IS true")
    op.create_index("ix_reminder_preferences_enabled", "reminder_preferences", ["user_id"],
                    unique=False, schema=schema, postgresql_where=enabled,
                    sqlite_where=enabled)

    op.create_table(
        "push_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=2048), nullable=False),
        sa.Column("p256dh", sa.String(length=100), nullable=False),
        sa.Column("auth", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], [_ref(schema, "users.id")],
                                name=op.f("fk_push_subscriptions_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_push_subscriptions")),
        sa.UniqueConstraint("endpoint", name=op.f("uq_push_subscriptions_endpoint")),
        schema=schema,
    )
    op.create_index("ix_push_subscriptions_user_id", "push_subscriptions", ["user_id"],
                    unique=False, schema=schema)

    op.create_table(
        "reminder_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("local_day", sa.Date(), nullable=False),
        sa.Column("recap", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pushes_sent", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], [_ref(schema, "users.id")],
                                name=op.f("fk_reminder_deliveries_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reminder_deliveries")),
        sa.UniqueConstraint("user_id", "local_day",
                            name=op.f("uq_reminder_deliveries_user_id_local_day")),
        schema=schema,
    )
    op.create_index("ix_reminder_deliveries_local_day", "reminder_deliveries", ["local_day"],
                    unique=False, schema=schema)


def downgrade():
    schema = _schema()
    op.drop_index("ix_reminder_deliveries_local_day", table_name="reminder_deliveries",
                  schema=schema)
    op.drop_table("reminder_deliveries", schema=schema)
    op.drop_index("ix_push_subscriptions_user_id", table_name="push_subscriptions",
                  schema=schema)
    op.drop_table("push_subscriptions", schema=schema)
    op.drop_index("ix_reminder_preferences_enabled", table_name="reminder_preferences",
                  schema=schema)
    op.drop_table("reminder_preferences", schema=schema)
