"""Campaign callbacks' accepted signatures (``callback_signatures``): a signed request is taken
once; its signature is kept until its timestamp is out of the replay window anyway."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete, select

from nba.storage.engine import Repository
from nba.storage.tables import CALLBACK_SIGNATURES

__all__ = ["CallbackSignatures"]


class CallbackSignatures(Repository):
    """The ``callback_signatures`` table."""

    def signature_seen(self, source: str, signature: str) -> bool:
        """Whether this source's signature was accepted before (and is still kept)."""
        s = CALLBACK_SIGNATURES
        with self.read() as conn:
            return conn.execute(select(s.c.digest).where(s.c.digest == _digest(source, signature))).first() is not None

    def keep_signature(self, source: str, signature: str, now: datetime, forget_before: datetime) -> bool:
        """Records an accepted signature; False when another request recorded it first (a
        replay racing its original). Drops those accepted before ``forget_before``."""
        s = CALLBACK_SIGNATURES
        digest = _digest(source, signature)
        with self.write() as conn:
            conn.execute(delete(s).where(s.c.accepted_at < forget_before))
            if conn.execute(select(s.c.digest).where(s.c.digest == digest)).first() is not None:
                return False
            conn.execute(s.insert().values(digest=digest, source=source, accepted_at=now))
            return True


def _digest(source: str, signature: str) -> str:
    return hashlib.sha256(f"{source}\x00{signature}".encode()).hexdigest()
