"""catalog search: title and description in one Unicode form

- sound_packages.title_key, description_key (text): the title and the description NFKC
  normalized and case folded (``models.base.unicode_key``, as goals are keyed). ``?q=`` is
  folded alike and matched with LIKE on them, so "café" typed in NFD (an "e" and a combining
  accent) finds a title stored in NFC, and the other way round. Filled in here for the
  packages there are; the model keeps them on every change.
- GIN trigram indexes on both (PostgreSQL with pg_trgm, as 0002_catalog: skipped with a
  warning where the extension is not there), built CONCURRENTLY outside the migration's
  transaction, so the catalog stays writable while they are built.

Revision ID: 0021_package_search_keys
Revises: 0020_uploads_heard_to_their_end
"""
import logging
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0021_package_search_keys"
down_revision = "0020_uploads_heard_to_their_end"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
INDEXES = {"ix_sound_packages_title_key_trgm": "title_key",
           "ix_sound_packages_description_key_trgm": "description_key"}


def _schema() -> str | None:
    return None if op.get_bind().dialect.name == "sqlite" else "sonicus"


def _key(text: str | None) -> str:
    """``models.base.unicode_key`` as it is at this revision."""
    folded = unicodedata.normalize("NFKC", text or "").replace("\u0130", "i").casefold()
    return unicodedata.normalize("NFKC", folded)


def _build_concurrently(name: str, statement: str) -> None:
    """Build an index on a big table without locking its writers out (PostgreSQL): outside the
    migration's transaction, CONCURRENTLY; an invalid one left by a build that failed is
    dropped first (IF NOT EXISTS would keep it as it is)."""
    with op.get_context().autocommit_block():
        invalid = op.get_bind().execute(sa.text(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'sonicus' AND c.relname = :name AND NOT i.indisvalid"),
            {"name": name}).first()
        if invalid is not None:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS sonicus.{name}")
        op.execute(statement)


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        # IF NOT EXISTS: a rerun after an index build failed finds the columns committed
        # (the build runs outside the transaction) and the version still at 0020.
        for column in ("title_key", "description_key"):
            op.execute(f"ALTER TABLE sonicus.sound_packages "
                       f"ADD COLUMN IF NOT EXISTS {column} text NOT NULL DEFAULT ''")
    else:
        with op.batch_alter_table("sound_packages", schema=_schema()) as batch_op:
            batch_op.add_column(sa.Column("title_key", sa.Text(), nullable=False,
                                          server_default=""))
            batch_op.add_column(sa.Column("description_key", sa.Text(), nullable=False,
                                          server_default=""))
    packages = sa.table("sound_packages", sa.column("id", sa.Integer),
                        sa.column("title", sa.String), sa.column("description", sa.Text),
                        sa.column("title_key", sa.Text), sa.column("description_key", sa.Text),
                        schema=_schema())
    bind = op.get_bind()
    for row in bind.execute(sa.select(packages.c.id, packages.c.title,
                                      packages.c.description)).all():
        bind.execute(packages.update().where(packages.c.id == row.id).values(
            title_key=_key(row.title), description_key=_key(row.description)))
    with op.batch_alter_table("sound_packages", schema=_schema()) as batch_op:
        batch_op.alter_column("title_key", server_default=None, existing_type=sa.Text(),
                              existing_nullable=False)
        batch_op.alter_column("description_key", server_default=None,
                              existing_type=sa.Text(), existing_nullable=False)
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'")).scalar_one_or_none()
    if schema is None:
        log.warning("pg_trgm unavailable: catalog search key indexes skipped")
        return
    for name, column in INDEXES.items():
        _build_concurrently(name, f'CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} '
                                  f'ON sonicus.sound_packages '
                                  f'USING gin ({column} "{schema}".gin_trgm_ops)')


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for name in INDEXES:
            op.execute(f"DROP INDEX IF EXISTS sonicus.{name}")
    with op.batch_alter_table("sound_packages", schema=_schema()) as batch_op:
        batch_op.drop_column("description_key")
        batch_op.drop_column("title_key")
