"""Model snapshots: the learner's state, kept so a restart replays only what came after."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from nba.storage.engine import Repository
from nba.storage.tables import SNAPSHOTS

__all__ = ["Snapshots"]


class Snapshots(Repository):
    """The ``snapshots`` table: the three newest are kept."""

    def save_snapshot(self, signature: str, model_version: str, last_feedback_id: int, state: bytes) -> None:
        table = SNAPSHOTS
        with self.write() as conn:
            conn.execute(
                table.insert().values(
                    created_at=datetime.now(UTC),
                    signature=signature,
                    model_version=model_version,
                    last_feedback_id=last_feedback_id,
                    state=state,
                )
            )
            # Keep the three newest: enough to survive one corrupt write.
            keep = select(table.c.id).order_by(table.c.id.desc()).limit(3).scalar_subquery()
            conn.execute(table.delete().where(table.c.id.not_in(keep)))

    def latest_snapshot(self) -> tuple[str, int, bytes] | None:
        table = SNAPSHOTS
        with self.read() as conn:
            row = conn.execute(
                select(table.c.signature, table.c.last_feedback_id, table.c.state).order_by(table.c.id.desc()).limit(1)
            ).first()
        return (row.signature, row.last_feedback_id, row.state) if row else None
