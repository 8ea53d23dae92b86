"""The predictive scores' models (``nba.profiles.scores``): one row a score, its model and
progressive quality pickled, with a version each learning transaction moves on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from nba.storage.engine import Repository
from nba.storage.tables import SCORE_MODELS

__all__ = ["ScoreModelRows"]


class ScoreModelRows(Repository):
    """The ``score_models`` table."""

    def score_models(self, conn: Any, names: list[str]) -> dict[str, tuple[str, int, bytes]]:
        """(source, version, state) of the scores asked for that are stored."""
        m = SCORE_MODELS
        rows = conn.execute(select(m.c.name, m.c.source, m.c.version, m.c.state).where(m.c.name.in_(names)))
        return {name: (source, int(version), bytes(state)) for name, source, version, state in rows}

    def score_model_versions(self, conn: Any) -> dict[str, tuple[str, int]]:
        """(source, version) of every stored score: what a process reads to know whether its copies are current."""
        m = SCORE_MODELS
        return {name: (source, int(version)) for name, source, version in conn.execute(select(m.c.name, m.c.source, m.c.version))}

    def save_score_model(self, conn: Any, name: str, source: str, version: int, state: bytes) -> None:
        m = SCORE_MODELS
        now = datetime.now(UTC)
        if not conn.execute(
            m.update().where(m.c.name == name).values(source=source, version=version, state=state, updated_at=now)
        ).rowcount:
            conn.execute(m.insert().values(name=name, source=source, version=version, state=state, updated_at=now))
