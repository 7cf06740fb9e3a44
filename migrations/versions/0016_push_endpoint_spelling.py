"""push subscriptions: one spelling per endpoint, one row per device

A push service's endpoint may be written with its scheme or host in capitals, its host fully
qualified (a trailing dot) or with https's default port (``https://FCM.googleapis.com.:443/x``
is ``https://fcm.googleapis.com/x``). Such spellings were stored as given, so one device could
hold two rows and get two pushes per reminder. From now on the app stores the plain spelling
(``webpush.normalized_endpoint``: scheme and host in lower case, one trailing dot and ``:443``
under https dropped, the path and query byte for byte); this brings the rows stored before to
it. Where several rows are one device, the one updated last is kept (its keys are the
browser's current ones, its account the browser's last sign-in), the others are deleted.

No schema change. The downgrade leaves the rows as they are (the spellings given are gone).

Revision ID: 0016_push_endpoint_spelling
Revises: 0015_goal_keys
"""
import sqlalchemy as sa
from alembic import op

revision = "0016_push_endpoint_spelling"
down_revision = "0015_goal_keys"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


# A frozen copy of webpush._origin_folded / _authority_normalised as of this revision: a
# migration must do tomorrow what it did today, whatever becomes of the app's code.
def _authority(scheme: str, authority: str) -> str:
    host, port = authority, None
    if authority.startswith("["):
        end = authority.find("]")
        if end >= 0 and authority[end + 1:end + 2] == ":":
            host, port = authority[:end + 1], authority[end + 2:]
    elif ":" in authority:
        host, _, port = authority.partition(":")
    if host.endswith("."):
        host = host[:-1]
    if scheme == "https" and port == "443":
        port = None
    return host if port is None else f"{host}:{port}"


def normalized_endpoint(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    ends = [index for index in (rest.find("/"), rest.find("?")) if index >= 0]
    end = min(ends, default=len(rest))
    scheme = scheme.lower()
    return f"{scheme}://{_authority(scheme, rest[:end].lower())}{rest[end:]}"


def upgrade():
    subscriptions = sa.table(
        "push_subscriptions", sa.column("id", sa.Integer), sa.column("endpoint", sa.String),
        sa.column("updated_at", sa.DateTime(timezone=True)), schema=_schema())
    bind = op.get_bind()
    rows = bind.execute(sa.select(subscriptions.c.id, subscriptions.c.endpoint)
                        .order_by(subscriptions.c.updated_at.desc(),
                                  subscriptions.c.id.desc())).all()
    kept: dict[str, int] = {}  # plain spelling -> the row kept (the first: updated last)
    renamed: list[dict] = []
    dropped: list[int] = []
    for row_id, endpoint in rows:
        plain = normalized_endpoint(endpoint)
        if plain in kept:
            dropped.append(row_id)
            continue
        kept[plain] = row_id
        if plain != endpoint:
            renamed.append({"row_id": row_id, "plain": plain})
    for start in range(0, len(dropped), 1000):  # first: a kept row takes the spelling they hold
        bind.execute(sa.delete(subscriptions).where(
            subscriptions.c.id.in_(dropped[start:start + 1000])))
    if renamed:
        bind.execute(sa.update(subscriptions)
                     .where(subscriptions.c.id == sa.bindparam("row_id"))
                     .values(endpoint=sa.bindparam("plain")), renamed)


def downgrade():
    pass
