"""day settings that take effect at the day's boundary, completion by the server, assignments

- users: ``prior_timezone``, ``prior_day_start_hour`` and ``day_settings_effective_at``. A change
  of timezone or day start hour is shown at once and takes effect at the next boundary of the
  day in force; until then the prior settings stay in force. Existing users have none pending.
- user_sessions: ``client_completed`` keeps what the client said. ``completed`` becomes the
  server's word: ended sessions whose listened time is under 80% of their playable length (the
  track's, else the package's length, capped by the session's maximum) are no longer completed.
  What the client said before is copied into ``client_completed`` first (sessions closed by the
  server said nothing: null); those the server closed are completed by their listened time.
- package_assignments: an administrator's grant of a package to a user, open whatever the tier
  until ``expires_at`` or ``revoked_at``; rows stay as history. Every library entry an
  administrator created so far becomes a live assignment without an end, from the moment it was
  put in the library (they were meant to open the package).

Revision ID: 0006_day_rules
Revises: 0005_erasure_and_portal
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_day_rules"
down_revision = "0005_erasure_and_portal"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    """``sonicus`` on PostgreSQL. On SQLite there is no schema: the app maps it away for the
    statements it builds from tables, but ALTER TABLE names the table as given."""
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def _ref(schema: str | None, column: str) -> str:
    return f"{schema}.{column}" if schema else column


def upgrade():
    schema = _schema()
    with op.batch_alter_table("users", schema=schema) as batch_op:
        batch_op.add_column(sa.Column("prior_timezone", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("prior_day_start_hour", sa.SmallInteger(), nullable=True))
        batch_op.add_column(sa.Column("day_settings_effective_at", sa.DateTime(timezone=True),
                                      nullable=True))

    with op.batch_alter_table("user_sessions", schema=schema) as batch_op:
        batch_op.add_column(sa.Column("client_completed", sa.Boolean(), nullable=True))

    op.create_table(
        "package_assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("package_id", sa.Integer(), nullable=False),
        sa.Column("assigned_by_id", sa.Integer(), nullable=True),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["assigned_by_id"], [_ref(schema, "users.id")],
                                name=op.f("fk_package_assignments_assigned_by_id_users"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["package_id"], [_ref(schema, "sound_packages.id")],
                                name=op.f("fk_package_assignments_package_id_sound_packages"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["revoked_by_id"], [_ref(schema, "users.id")],
                                name=op.f("fk_package_assignments_revoked_by_id_users"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["user_id"], [_ref(schema, "users.id")],
                                name=op.f("fk_package_assignments_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_package_assignments")),
        schema=schema,
    )
    with op.batch_alter_table("package_assignments", schema=schema) as batch_op:
        batch_op.create_index("ix_package_assignments_user_id_package_id",
                              ["user_id", "package_id"], unique=False)

    _backfill(schema)


def _backfill(schema):
    sessions = sa.table("user_sessions", sa.column("id"), sa.column("package_id"),
                        sa.column("track_id"), sa.column("status"), sa.column("end_reason"),
                        sa.column("listened_seconds"), sa.column("max_duration_seconds"),
                        sa.column("completed"), sa.column("client_completed"), schema=schema)
    tracks = sa.table("tracks", sa.column("id"), sa.column("duration_seconds"), schema=schema)
    packages = sa.table("sound_packages", sa.column("id"), sa.column("duration_seconds"),
                        schema=schema)
    library = sa.table("user_sound_packages", sa.column("user_id"), sa.column("package_id"),
                       sa.column("assigned_at"), sa.column("assigned_by_id"), schema=schema)
    assignments = sa.table("package_assignments", sa.column("user_id"),
                           sa.column("package_id"), sa.column("assigned_by_id"),
                           sa.column("assigned_at"), schema=schema)

    # What the client said: every session it ended (not those the server closed).
    op.execute(sessions.update()
               .where(sessions.c.status == "ended",
                      sessions.c.end_reason.in_(["completed", "stopped"]))
               .values(client_completed=sessions.c.completed))

    # The server's word: 80% of the playable length, as services.listening.reaches_completion.
    track_length = (sa.select(tracks.c.duration_seconds)
                    .where(tracks.c.id == sessions.c.track_id).scalar_subquery())
    package_length = (sa.select(sa.func.nullif(packages.c.duration_seconds, 0))
                      .where(packages.c.id == sessions.c.package_id).scalar_subquery())
    content = sa.case((sessions.c.track_id.is_not(None), track_length), else_=package_length)
    cap = sessions.c.max_duration_seconds
    playable = sa.case((content.is_(None), cap), (cap.is_(None), content),
                       (content < cap, content), else_=cap)
    reaches = sa.and_(playable.is_not(None), sessions.c.listened_seconds * 5 >= playable * 4)
    op.execute(sessions.update()
               .where(sessions.c.completed.is_(True), sa.not_(reaches))
               .values(completed=False, end_reason=sa.case(
                   (sessions.c.end_reason == "completed", "stopped"),
                   else_=sessions.c.end_reason)))
    # Sessions the server closed are completed by their listened time alone, as the sweep
    # (services.listening.close_stale_sessions) now does.
    op.execute(sessions.update()
               .where(sessions.c.status == "ended", sessions.c.end_reason == "expired",
                      sessions.c.completed.is_(False), reaches)
               .values(completed=True))

    op.execute(assignments.insert().from_select(
        ["user_id", "package_id", "assigned_by_id", "assigned_at"],
        sa.select(library.c.user_id, library.c.package_id, library.c.assigned_by_id,
                  library.c.assigned_at).where(library.c.assigned_by_id.is_not(None))))


def downgrade():
    schema = _schema()
    with op.batch_alter_table("package_assignments", schema=schema) as batch_op:
        batch_op.drop_index("ix_package_assignments_user_id_package_id")
    op.drop_table("package_assignments", schema=schema)
    with op.batch_alter_table("user_sessions", schema=schema) as batch_op:
        batch_op.drop_column("client_completed")
    with op.batch_alter_table("users", schema=schema) as batch_op:
        batch_op.drop_column("day_settings_effective_at")
        batch_op.drop_column("prior_day_start_hour")
        batch_op.drop_column("prior_timezone")
