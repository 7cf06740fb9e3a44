"""user_sessions: an uploaded session was heard of playing to its end

The offline sync judges overlaps by how far each stored session is known to have played: to
its last heartbeat (``offline_sync._known_end``). An upload reports its whole interval, so it
is stored with ``last_heartbeat_at = ended_at``; this fills that in for uploads stored before
(ended sessions with a client id and no heartbeat). Live sessions started with a client id
and ended without a heartbeat are filled in too (they cannot be told apart): they keep
spanning to their end, as every ended session did before.

Revision ID: 0020_uploads_heard_to_their_end
Revises: 0019_package_publication_times
"""
import sqlalchemy as sa
from alembic import op

revision = "0020_uploads_heard_to_their_end"
down_revision = "0019_package_publication_times"
branch_labels = None
depends_on = None


def _table() -> str:
    return "user_sessions" if op.get_bind().dialect.name == "sqlite" \
        else "sonicus.user_sessions"


def upgrade():
    op.execute(sa.text(
        f"UPDATE {_table()} SET last_heartbeat_at = ended_at "
        "WHERE status = 'ended' AND client_id IS NOT NULL AND last_heartbeat_at IS NULL "
        "AND ended_at IS NOT NULL"))


def downgrade():
    pass  # a heartbeat at the end of an ended session changes nothing else
