"""The catalogue: every ``*.yaml`` file of the policies folder, loaded and validated as one.

All or nothing: any problem in any file refuses the whole catalogue, and every problem is
reported at once, each naming the file, the offer and the field. Files ending in
``_test.yaml`` hold examples (``nba.examples``), not offers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from nba.errors import CatalogueError
from nba.offers import CatalogueFile, Offer
from nba.rules import Rule, RuleSyntaxError

__all__ = ["Catalogue", "CompiledOffer", "load_catalogue"]

EXAMPLE_SUFFIX = "_test.yaml"


@dataclass(frozen=True)
class CompiledOffer:
    offer: Offer
    eligibility: Rule
    #: the file that declares it
    source: str

    @property
    def id(self) -> str:
        return self.offer.id


@dataclass
class Catalogue:
    """An immutable, validated catalogue; the decision pipeline swaps whole catalogues."""

    channels: tuple[str, ...]
    offers: dict[str, CompiledOffer]
    #: content hash over every file's name and bytes
    content_hash: str
    #: file name -> file text, for the record kept with each version
    files: dict[str, str]
    #: "<number>-<hash>" once registered with the store; the hash alone before
    version: str = ""
    by_channel: dict[str, list[CompiledOffer]] = field(init=False)
    fallback: dict[str, CompiledOffer] = field(init=False)

    def __post_init__(self) -> None:
        self.by_channel = {c: [] for c in self.channels}
        self.fallback = {}
        for compiled in self.offers.values():
            for channel in compiled.offer.channels:
                if compiled.offer.fallback:
                    self.fallback[channel] = compiled
                else:
                    self.by_channel[channel].append(compiled)
        if not self.version:
            self.version = self.content_hash[:12]


def load_catalogue(directory: str | Path) -> Catalogue:
    """Loads and validates every ``*.yaml`` file directly in ``directory``."""
    root = Path(directory)
    if not root.is_dir():
        raise CatalogueError([f"{root}: not a directory (set --policies or NBA_POLICIES)"])
    paths = sorted(p for p in root.glob("*.yaml") if not p.name.endswith(EXAMPLE_SUFFIX))
    if not paths:
        raise CatalogueError([f"{root}: no *.yaml catalogue files"])
    problems: list[str] = []
    files: dict[str, str] = {}
    parsed: list[tuple[str, CatalogueFile]] = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        files[path.name] = text
        document = _parse(path.name, text, problems)
        if document is not None:
            parsed.append((path.name, document))

    channels: list[str] = []
    for _, document in parsed:
        channels.extend(c for c in document.channels if c not in channels)
    if parsed and not channels:
        problems.append(f"{root}: no file declares `channels:` (for example channels: [web, app])")

    offers: dict[str, CompiledOffer] = {}
    fallbacks: dict[str, str] = {}
    for name, document in parsed:
        for offer in document.offers:
            where = f"{name}: offer '{offer.id}'"
            if offer.id in offers:
                problems.append(f"{where}: id already used in {offers[offer.id].source}")
                continue
            unknown = [c for c in offer.channels if c not in channels]
            if unknown:
                problems.append(
                    f"{where}: field 'channels': {', '.join(unknown)} not declared "
                    f"(declared: {', '.join(channels)})"
                )
            try:
                rule = Rule(offer.eligibility)
            except RuleSyntaxError as exc:
                problems.append(f"{where}: field 'eligibility': {exc}")
                continue
            if offer.fallback:
                for channel in offer.channels:
                    if channel in fallbacks:
                        problems.append(
                            f"{where}: field 'fallback': channel '{channel}' already has "
                            f"fallback '{fallbacks[channel]}' (one per channel)"
                        )
                    fallbacks[channel] = offer.id
            offers[offer.id] = CompiledOffer(offer, rule, name)
    if problems:
        raise CatalogueError(problems)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return Catalogue(tuple(channels), offers, digest.hexdigest(), files)


def _parse(name: str, text: str, problems: list[str]) -> CatalogueFile | None:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problems.append(f"{name}: not valid YAML{where}: {getattr(exc, 'problem', exc)}")
        return None
    if raw is None:
        return CatalogueFile()
    if not isinstance(raw, Mapping):
        problems.append(f"{name}: expected a mapping with `channels:` and `offers:`, got {type(raw).__name__}")
        return None
    try:
        return CatalogueFile.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(f"{name}: {_describe(raw, error)}")
        return None


def _describe(raw: Mapping[str, Any], error: Mapping[str, Any]) -> str:
    """Turns a pydantic error location into "offer 'x': field 'y': why"."""
    loc = list(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (misspelt?)"
    if len(loc) >= 2 and loc[0] == "offers" and isinstance(loc[1], int):
        offers = raw.get("offers") or []
        entry = offers[loc[1]] if loc[1] < len(offers) else None
        offer_id = entry.get("id") if isinstance(entry, Mapping) else None
        who = f"offer '{offer_id}'" if offer_id else f"offers[{loc[1]}]"
        rest = ".".join(str(part) for part in loc[2:])
        return f"{who}: field '{rest}': {message}" if rest else f"{who}: {message}"
    return f"field '{'.'.join(str(part) for part in loc)}': {message}"
