"""Policy set versions and their activations: what was published, by whom, and what is live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from nba.storage.engine import Repository
from nba.storage.tables import POLICY_ACTIVATIONS, POLICY_SETS

__all__ = ["Activation", "PolicySets"]


@dataclass(frozen=True)
class Activation:
    """The live activation after an attempt to change it (``Store.publish``, ``Store.activate``)."""

    #: the activation's id: monotonic, in commit order
    id: int
    #: the policy set version it made live
    version: int
    #: whether this attempt wrote it (False: the version was live already, or refused)
    activated: bool
    #: another version than the expected one was live: nothing was written, and ``version``
    #: is the one live (0 before the first activation)
    refused: bool = False


class PolicySets(Repository):
    """The ``policy_sets`` and ``policy_activations`` tables."""

    def register_policy_set(self, files: dict[str, str], content_hash: str, actor: str = "", comment: str = "") -> int:
        """The version number of this content, recording it as the next version if new."""
        with self.write() as conn:
            return self._register(conn, files, content_hash, actor, comment)

    @staticmethod
    def _register(conn: Any, files: dict[str, str], content_hash: str, actor: str, comment: str) -> int:
        table = POLICY_SETS
        version = conn.execute(select(table.c.version).where(table.c.content_hash == content_hash)).scalar()
        if version is None:
            version = conn.execute(
                table.insert().values(
                    content_hash=content_hash,
                    created_at=datetime.now(UTC),
                    created_by=actor,
                    comment=comment,
                    files=files,
                )
            ).inserted_primary_key[0]
        return int(version)

    def publish(
        self,
        files: dict[str, str],
        content_hash: str,
        actor: str,
        source: str,
        comment: str = "",
        at: datetime | None = None,
        expected_version: int = 0,
    ) -> Activation:
        """Registers ``files`` as a version (content published before keeps its number) and
        makes it live, in one write transaction: see ``activate``. When the activation is
        refused nothing is registered."""
        with self.write() as conn:
            live = self._newest_activation(conn)
            if refused := self._refused(live, expected_version):
                return refused
            version = self._register(conn, files, content_hash, actor, comment)
            return self._activate(conn, live, version, actor, source, comment, at)

    def activate(
        self,
        version: int,
        actor: str,
        source: str,
        comment: str = "",
        at: datetime | None = None,
        expected_version: int = 0,
    ) -> Activation:
        """Makes ``version`` live unless it is live already, and, with ``expected_version``,
        only if that version is the live one.

        The check and the insert are one write transaction, which holds the database's write
        lock from its start (BEGIN IMMEDIATE on SQLite, the advisory lock on PostgreSQL): no
        other process activates anything in between, whatever it remembers as live, and
        activation ids follow commit order. Returns the live activation afterwards, with
        ``activated`` False when nothing was written."""
        with self.write() as conn:
            live = self._newest_activation(conn)
            if refused := self._refused(live, expected_version):
                return refused
            return self._activate(conn, live, version, actor, source, comment, at)

    @staticmethod
    def _refused(live: Any, expected_version: int) -> Activation | None:
        if expected_version and (live is None or live.version != expected_version):
            return Activation(live.id if live else 0, live.version if live else 0, activated=False, refused=True)
        return None

    @staticmethod
    def _newest_activation(conn: Any) -> Any:
        table = POLICY_ACTIVATIONS
        return conn.execute(select(table.c.id, table.c.version).order_by(table.c.id.desc()).limit(1)).first()

    @staticmethod
    def _activate(conn: Any, live: Any, version: int, actor: str, source: str, comment: str, at: datetime | None) -> Activation:
        if live is not None and live.version == version:
            return Activation(live.id, version, activated=False)
        table = POLICY_ACTIVATIONS
        activation_id = conn.execute(
            table.insert().values(
                version=version, activated_at=at or datetime.now(UTC), actor=actor, source=source, comment=comment
            )
        ).inserted_primary_key[0]
        return Activation(int(activation_id), version, activated=True)

    def newest_activation_id(self) -> int:
        """The id of the newest activation (0 before the first): cheap enough to poll."""
        table = POLICY_ACTIVATIONS
        with self.read() as conn:
            return int(conn.execute(select(func.max(table.c.id))).scalar() or 0)

    def live_activation(self) -> Any:
        """The newest activation joined with its version (None before the first)."""
        a, p = POLICY_ACTIVATIONS, POLICY_SETS
        with self.read() as conn:
            return conn.execute(
                select(a.c.id, a.c.version, a.c.source, a.c.actor, a.c.activated_at, p.c.content_hash, p.c.files)
                .join(p, p.c.version == a.c.version)
                .order_by(a.c.id.desc())
                .limit(1)
            ).first()

    def last_file_hash(self) -> str | None:
        """The content hash the policies folder last published, if it ever did."""
        a, p = POLICY_ACTIVATIONS, POLICY_SETS
        with self.read() as conn:
            return conn.execute(
                select(p.c.content_hash)
                .join(a, p.c.version == a.c.version)
                .where(a.c.source == "file")
                .order_by(a.c.id.desc())
                .limit(1)
            ).scalar()

    def policy_set_row(self, version: int) -> Any:
        table = POLICY_SETS
        with self.read() as conn:
            return conn.execute(select(table).where(table.c.version == version)).first()

    def policy_set_versions(self, before: int | None, limit: int) -> list[Any]:
        table = POLICY_SETS
        query = select(table.c.version, table.c.content_hash, table.c.created_at, table.c.created_by, table.c.comment)
        if before is not None:
            query = query.where(table.c.version < before)
        with self.read() as conn:
            return list(conn.execute(query.order_by(table.c.version.desc()).limit(limit)).all())

    def activations(self, limit: int) -> list[Any]:
        table = POLICY_ACTIVATIONS
        with self.read() as conn:
            return list(conn.execute(select(table).order_by(table.c.id.desc()).limit(limit)).all())
