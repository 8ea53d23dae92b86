"""Offline evaluations run from the console, kept: what was asked, by whom, how far it got, and
the report (``nba.service.evaluations`` runs them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from nba.storage.engine import Repository, utc
from nba.storage.tables import EVALUATIONS

__all__ = ["Evaluations"]

#: an evaluation as stored: id, created_at, updated_at, created_by, status, progress, stage, request, report, error
Evaluation = dict[str, Any]


class Evaluations(Repository):
    """The ``evaluations`` table."""

    def create_evaluation(self, request: dict[str, Any], created_by: str, now: datetime) -> int:
        """A new evaluation, waiting to run; its id."""
        with self.write() as conn:
            result = conn.execute(
                EVALUATIONS.insert().values(
                    created_at=now,
                    updated_at=now,
                    created_by=created_by,
                    status="waiting",
                    progress=0.0,
                    stage="waiting to start",
                    request=request,
                    report=None,
                    error="",
                )
            )
            return int(result.inserted_primary_key[0])

    def update_evaluation(self, evaluation_id: int, now: datetime, **values: Any) -> None:
        """Sets ``values`` (status, progress, stage, report, error) and the heartbeat."""
        with self.write() as conn:
            conn.execute(EVALUATIONS.update().where(EVALUATIONS.c.id == evaluation_id).values(updated_at=now, **values))

    def evaluation(self, evaluation_id: int) -> Evaluation | None:
        with self.read() as conn:
            row = conn.execute(select(EVALUATIONS).where(EVALUATIONS.c.id == evaluation_id)).first()
        return _row(row) if row is not None else None

    def evaluations(self, limit: int = 50) -> list[Evaluation]:
        """The newest first, without their reports."""
        e = EVALUATIONS
        columns = [c for c in e.c if c.name != "report"]
        with self.read() as conn:
            rows = conn.execute(select(*columns).order_by(e.c.id.desc()).limit(limit)).all()
        return [_row(r) for r in rows]


def _row(row: Any) -> Evaluation:
    out = dict(row._mapping)
    for name in ("created_at", "updated_at"):
        out[name] = utc(out[name])
    return out
