"""``nba profiles import FILE``: touch-point history in bulk, through the same checks and identity
resolution as ``ProfileService.Track``; ``nba profiles backfill``: every profile rebuilt under the
live definition now (``nba.profiles.backfill``; the service does it in the background);
``nba profiles segments`` and ``nba profiles segment NAME --count|--export FILE|--history``:
segment sizes and audiences (``nba.profiles.segments``), with the changes time alone brought
recorded first, as the service's segment clock would.

A file is JSON Lines (one object a line: ``event_id``, ``type``, ``customer_id`` and/or
``identities`` {kind: value}, ``source``, ``occurred_at`` ISO 8601, ``properties`` {...}) or CSV
(a ``.csv`` name; columns ``event_id``, ``type``, ``customer_id``, ``source``, ``occurred_at``,
``identities.KIND`` and ``properties.NAME``; a property the profile declares a number or a bool
is read as one). Events are taken one by one, each durable before the next: an interrupted
import is run again and what it took already is answered duplicate, never taken twice.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba.cli.common import EXIT_FAILED, CliError, _database_errors, _readable_file, _settings

if TYPE_CHECKING:  # imported when run, not with the module: `nba --help` stays quick
    from nba.config import Settings
    from nba.policy.profile import ProfileDefinition
    from nba.profiles.scores import ScoreModels
    from nba.storage.store import Store

#: refusals printed in full (the rest are counted)
SHOWN_REFUSALS = 20
#: lines between two progress updates
PROGRESS_EVERY = 500


def _profiles(args: argparse.Namespace) -> int:
    from nba.errors import NbaError
    from nba.profiles.tracking import Tracker, TrackInput
    from nba.storage.bus import RedisBus

    if args.action == "forget":
        return _forget(args)
    if args.identifier or args.reason:
        raise CliError("--identifier and --reason go with: nba profiles forget")
    if args.action in ("segments", "segment"):
        return _segments(args)
    if args.action != "dead-letters" and (args.replay or args.event_type):
        raise CliError("--replay and --type go with: nba profiles dead-letters")
    if args.action == "dead-letters":
        return _dead_letters(args)
    if args.action == "quality":
        return _quality(args)
    if args.action == "scores":
        return _scores(args)
    if args.count or args.export or args.history:
        raise CliError("--count, --export and --history go with: nba profiles segment NAME")
    if args.action == "backfill":
        return _backfill(args)
    if not args.file:
        raise CliError("FILE: name the file of events to import (JSON Lines, or CSV with a .csv name)")
    path = _readable_file(args.file, "FILE")
    with _opened(args) as (settings, store):
        definition = _live_definition(store, settings)
        # replicas on a Redis bus are told which profiles changed, as after their own events,
        # a batch at a time, so that none keeps an older profile in its cache
        bus = (
            RedisBus(settings.bus, settings.bus_stream, store.origin, settings.bus_stream_length)
            if settings.bus.startswith(("redis://", "rediss://", "unix://"))
            else None
        )
        changed: list[str] = []
        tracker = Tracker(store, lambda: definition, changed=changed.extend, scores=_scores_of(store, definition))
        counts = {"imported": 0, "duplicate": 0, "refused": 0}
        refusals: list[str] = []
        progress = sys.stderr.isatty()
        for number, line in _lines(path, definition.event_types):
            try:
                if isinstance(line, str):
                    raise CliError(line)
                result = tracker.track(TrackInput(**line))
                counts["duplicate" if result.duplicate else "imported"] += 1
            except (NbaError, CliError, TypeError, ValueError) as exc:
                counts["refused"] += 1
                if len(refusals) < SHOWN_REFUSALS:
                    refusals.append(f"line {number}: {exc}")
            if number % PROGRESS_EVERY == 0:
                _announce(bus, changed)
                if progress:
                    print(f"\r{number:,} lines: {_summary(counts)}", end="", file=sys.stderr, flush=True)
        _announce(bus, changed)
    if progress:
        print(file=sys.stderr)
    for refusal in refusals:
        print(f"refused: {refusal}", file=sys.stderr)
    if counts["refused"] > len(refusals):
        print(f"refused: ... and {counts['refused'] - len(refusals)} more", file=sys.stderr)
    print(f"{path}: {_summary(counts)}")
    return EXIT_FAILED if counts["refused"] else 0


def _backfill(args: argparse.Namespace) -> int:
    """Every profile stored under another definition than the live set's, rebuilt now."""
    from nba.profiles.backfill import Backfill, Progress
    from nba.profiles.tracking import Tracker

    progress = sys.stderr.isatty()
    with _opened(args) as (settings, store):
        definition = _live_definition(store, settings)

        def report(p: Progress) -> None:
            if progress:
                print(f"\r{p.done:,} of {p.total:,} profiles rebuilt", end="", file=sys.stderr, flush=True)

        tracker = Tracker(store, lambda: definition, scores=_scores_of(store, definition))
        done = Backfill(tracker, lambda: definition, store.count_built_under_other).run(report)
    if progress and done.total:
        print(file=sys.stderr)
    print(f"{done.done:,} profiles rebuilt under definition {definition.fingerprint} in {done.seconds:.1f} s")
    return 0


def _segments(args: argparse.Namespace) -> int:
    """Segment sizes (``segments``), or one segment's size, members or history (``segment NAME``)."""
    from nba.profiles.tracking import Tracker

    with _opened(args) as (settings, store):
        definition = _live_definition(store, settings)
        declared = {s.name: s for s in definition.segments}
        if args.action == "segment":
            if not args.file:
                raise CliError("NAME: name the segment (nba profiles segment NAME --count)")
            if args.file not in declared:
                known = ", ".join(sorted(declared)) or "none: the live profile section declares no segments"
                raise CliError(f"NAME: '{args.file}' is not a segment of the live policy set ({known})")
        elif args.file or args.count or args.export or args.history:
            raise CliError("nba profiles segments takes no NAME or option; for one segment: nba profiles segment NAME")
        # what time alone changed since the last events (the service's segment clock does it
        # every second; with no service running, nobody has)
        tracker = Tracker(store, lambda: definition, scores=_scores_of(store, definition))
        while len(tracker.sweep_segments(500)) == 500:
            pass
        if args.action == "segments":
            return _segment_table(store, declared)
        name = args.file
        if args.export:
            return _segment_export(store, name, Path(args.export))
        if args.history:
            size = 0
            print("hour (UTC)         entered   exited     size")
            for hour, entered, exited in store.segment_history(name):
                size += entered - exited
                stamp = datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d %H:00")
                print(f"{stamp:<16} {entered:>9,} {exited:>8,} {size:>8,}")
            return 0
        print(store.segment_sizes().get(name, 0))
    return 0


def _segment_table(store: Store, declared: Mapping[str, Any]) -> int:
    sizes = store.segment_sizes()
    day_ago = int(datetime.now(UTC).timestamp() // 3600) - 23  # this hour and the 23 before it
    print(f"{'segment':<24} {'members':>9} {'in 24h':>7} {'out 24h':>7}  owner / description")
    for name, segment in sorted(declared.items()):
        recent = [(e, x) for hour, e, x in store.segment_history(name) if hour >= day_ago]
        entered, exited = sum(e for e, _ in recent), sum(x for _, x in recent)
        about = " / ".join(part for part in (segment.owner, segment.description) if part)
        print(f"{name:<24} {sizes.get(name, 0):>9,} {entered:>7,} {exited:>7,}  {about}")
    if not declared:
        print("(the live profile section declares no segments)")
    return 0


def _segment_export(store: Store, name: str, path: Path) -> int:
    """The members, written to a file beside ``path`` and moved over it: a reader never finds half an audience."""
    partial = path.with_name(path.name + ".partial")
    try:
        count = 0
        with partial.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["customer_id", "entered_at"])
            for customer_id, entered in store.segment_members(name):
                writer.writerow([customer_id, entered.isoformat()])
                count += 1
        partial.replace(path)
    except OSError as exc:
        raise CliError(f"--export {path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        partial.unlink(missing_ok=True)  # gone once moved; left by nothing that failed
    print(f"{path}: {count:,} customers in segment {name}")
    return 0


def _forget(args: argparse.Namespace) -> int:
    """A customer erased, as ForgetCustomer does, from the command line."""
    import getpass
    import secrets

    from nba.governance.erasure import FORGOTTEN, Eraser, Pseudonyms
    from nba.storage.bus import RedisBus

    if bool(args.file) == bool(args.identifier):
        raise CliError("CUSTOMER_ID: name the customer, or give --identifier KIND=VALUE (one of the two)")
    kind, value = "", ""
    if args.identifier:
        kind, _, value = args.identifier.partition("=")
        if not kind or not value:
            raise CliError(f"--identifier: '{args.identifier}' is not KIND=VALUE (email=ada@example.com)")
    with _opened(args) as (settings, store):
        definition = _live_definition(store, settings)
        key = settings.pseudonym_key or store.secret("pseudonym_key", lambda: secrets.token_hex(32))
        bus = (
            RedisBus(settings.bus, settings.bus_stream, store.origin, settings.bus_stream_length)
            if settings.bus.startswith(("redis://", "rediss://", "unix://"))
            else None
        )
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        result = Eraser(store, lambda: definition, lambda: Pseudonyms(key.encode())).forget(
            args.file or "", kind, value, f"cli:{user}", args.reason
        )
        told = bus.publish_profiles([FORGOTTEN + i for i in result.customer_ids]) if bus and result.customer_ids else None
    print(f"forgotten: {', '.join(result.customer_ids) or '(no customer holds it)'} -> {result.pseudonym}")
    erased = [f"{table} {n:,}" for table, n in sorted(result.counts.items()) if n]
    print("erased: " + (", ".join(erased) or "nothing was left"))
    if result.forgotten_before:
        print("(this customer had been forgotten before)")
    if told is False:
        print("warning: the Redis bus is unavailable: running services' caches are not told", file=sys.stderr)
    elif bus is None:
        print(
            "note: running services hold what they cached of the customer until told: use ForgetCustomer on a running service, or --bus"
        )
    return 0


#: dead letters listed in full (the rest are counted)
SHOWN_DEAD_LETTERS = 50


def _dead_letters(args: argparse.Namespace) -> int:
    """The events the profile refused and kept, or (``--replay``) them applied under the live definition."""
    from nba.profiles.tracking import Tracker

    if args.file or args.count or args.export or args.history:
        raise CliError("nba profiles dead-letters takes --replay and --type only")
    progress = sys.stderr.isatty()
    with _opened(args) as (settings, store):
        if args.replay:
            definition = _live_definition(store, settings)

            def report(counts: Mapping[str, int]) -> None:
                if progress:
                    print(f"\r{_replayed(counts)}", end="", file=sys.stderr, flush=True)

            tracker = Tracker(store, lambda: definition, scores=_scores_of(store, definition))
            counts = tracker.replay_dead_letters(args.event_type, report=report)
            if progress:
                print(file=sys.stderr)
            print(_replayed(counts))
            left = store.dead_letters(0, 1, args.event_type)
            return EXIT_FAILED if left else 0
        letters = store.dead_letters(0, SHOWN_DEAD_LETTERS + 1, args.event_type)
        total = sum(n for _, event_type, _, n in store.dead_letter_counts() if args.event_type in (None, event_type))
    if not letters:
        print("no dead letters" + (f" of type {args.event_type}" if args.event_type else ""))
        return 0
    print(f"{'received (UTC)':<20} {'tries':>5}  {'event_id':<24} {'type':<16} {'source':<14} reason")
    for d in letters[:SHOWN_DEAD_LETTERS]:
        received = d.last_received_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{received:<20} {d.attempts:>5}  {d.event_id[:24]:<24} {d.type[:16]:<16} {d.source[:14]:<14} {d.reason[:120]}")
    if total > SHOWN_DEAD_LETTERS:
        print(f"... and {total - SHOWN_DEAD_LETTERS:,} more")
    print(f"{total:,} dead letters: fix the profile section, publish it, then: nba profiles dead-letters --replay")
    return 0


def _replayed(counts: Mapping[str, int]) -> str:
    return f"{counts['applied']:,} applied, {counts['duplicate']:,} applied before, {counts['refused']:,} still refused"


def _quality(args: argparse.Namespace) -> int:
    """Each attribute's completeness, and the refused events kept, by source."""

    if args.file or args.count or args.export or args.history:
        raise CliError("nba profiles quality takes no NAME or option")
    with _opened(args) as (settings, store):
        definition = _live_definition(store, settings)
        customers, held = store.completeness(definition.attributes)
        refused = store.dead_letter_counts()
    print(f"{customers:,} customers")
    if held:
        print(f"\n{'attribute':<28} {'customers':>10} {'complete':>9}")
        for name, n in sorted(held.items()):
            share = f"{100.0 * n / customers:.1f}%" if customers else "-"
            print(f"{name:<28} {n:>10,} {share:>9}")
    print(f"\n{'refused events kept (dead letters)':<40} {'events':>8}")
    for source, event_type, field, n in refused:
        print(f"{(source or '(no source)') + ' / ' + event_type + ' / ' + (field or '-'):<40} {n:>8,}")
    if not refused:
        print("none")
    return 0


def _scores(args: argparse.Namespace) -> int:
    """Each predictive score's quality, as learned so far by every process."""
    from nba.profiles.scores import MIN_EXAMPLES, ScoreModels

    if args.file or args.count or args.export or args.history:
        raise CliError("nba profiles scores takes no NAME or option")
    with _opened(args) as (settings, store):
        definition = _live_definition(store, settings)
        models = ScoreModels(store, lambda: definition)
        models.refresh()
        quality = models.quality()
    if not definition.scores:
        print("(the live profile section declares no scores)")
        return 0
    print(f"{'score':<20} {'labels':>8} {'positive':>9} {'AUC':>6} {'calib.err':>9} {'log loss':>8}  verdict")
    for score in definition.scores:
        q = quality[score.name]
        verdict = (
            f"flagged: {'too few labels' if min(q['positives'], q['examples'] - q['positives']) < MIN_EXAMPLES else f'AUC below {score.min_auc:g}'}"
            if q["flagged"]
            else "worth using"
        )
        print(
            f"{score.name:<20} {q['examples']:>8,} {q['positives']:>9,} {q['auc']:>6.3f} {q['calibration_error']:>9.3f} "
            f"{q['log_loss']:>8.3f}  {verdict}"
        )
        print(f"  {score.source}" + (f"  ({score.owner}: {score.description})" if score.owner or score.description else ""))
    return 0


def _scores_of(store: Store, definition: ProfileDefinition) -> ScoreModels:
    """The predictive scores' models as every process has learned them: a tool that tracks
    events (an import, a replay) or matures labels (the segment clock's work) learns into them
    as the service would."""
    from nba.profiles.scores import ScoreModels

    models = ScoreModels(store, lambda: definition)
    models.refresh()
    return models


@contextmanager
def _opened(args: argparse.Namespace) -> Iterator[tuple[Settings, Store]]:
    """The settings and the store the command's flags name; a database that cannot be reached
    becomes one clear line (``_database_errors``), and the engine is closed after."""
    from nba.storage.engine import open_engine
    from nba.storage.store import Store

    settings = _settings(args)
    with _database_errors(settings.database_url):
        engine = open_engine(settings.database_url)
        try:
            yield settings, Store(engine)
        finally:
            engine.dispose()


def _live_definition(store: Store, settings: Settings) -> ProfileDefinition:
    """The profile definition in force: the live policy set's, or (none published yet) that of
    the policies folder the service would start from."""
    from nba.policy.loading import load_policy_set, parse_policy_set

    live = store.live_activation()
    policy_set = parse_policy_set(live.files) if live is not None else load_policy_set(settings.policies)
    return policy_set.profile


def _announce(bus: Any, changed: list[str]) -> None:
    """The ids of the profiles changed since the last call, published on the Redis bus."""
    if bus is not None and changed:
        if not bus.publish_profiles(sorted(set(changed))):
            print("warning: the Redis bus is unavailable: running services' caches are not told", file=sys.stderr)
    changed.clear()


def _summary(counts: Mapping[str, int]) -> str:
    return f"{counts['imported']:,} imported, {counts['duplicate']:,} duplicate, {counts['refused']:,} refused"


def _lines(path: Path, types: Mapping[str, Mapping[str, str]]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, the event's fields, or why the line is not one)."""
    if path.suffix.lower() == ".csv":
        yield from _csv(path, types)
        return
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, "not UTF-8 text"
                continue
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                yield number, f"not JSON: {getattr(exc, 'msg', 'nested too deeply')}"
                continue
            yield number, _event(data)


def _csv(path: Path, types: Mapping[str, Mapping[str, str]]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """CSV rows, numbered as lines (the header is line 1)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.DictReader(f), start=2):
                data: dict[str, Any] = {"identities": {}, "properties": {}}
                declared = types.get(row.get("type") or "", {})
                for column, value in row.items():
                    if column is None:
                        yield number, "more values than the header has columns"
                        break
                    if value in (None, ""):
                        continue
                    if column.startswith("identities."):
                        data["identities"][column.split(".", 1)[1]] = value
                    elif column.startswith("properties."):
                        name = column.split(".", 1)[1]
                        data["properties"][name] = _typed(value, declared.get(name))
                    else:
                        data[column] = value
                else:
                    yield number, _event(data)
    except UnicodeDecodeError:
        raise CliError(f"FILE {path}: not UTF-8 text (save the CSV as UTF-8)") from None


def _typed(value: str, kind: str | None) -> Any:
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            return value  # the profile's check names the property
    if kind == "bool":
        return {"true": True, "false": False}.get(value.strip().lower(), value)
    return value


def _event(data: Any) -> dict[str, Any] | str:
    """The keyword arguments of a ``TrackInput``, or why the line is not an event."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    known = {"event_id", "type", "customer_id", "identities", "source", "occurred_at", "properties"}
    unknown = sorted(set(data) - known)
    if unknown:
        return f"{unknown[0]}: unknown field (fields: {', '.join(sorted(known))})"
    out: dict[str, Any] = {k: data[k] for k in known if k in data}
    for name in ("event_id", "type", "customer_id", "source"):
        if name in out and not isinstance(out[name], str):
            return f"{name}: must be a string"
    if not isinstance(out.get("identities", {}), dict) or not all(isinstance(v, str) for v in out.get("identities", {}).values()):
        return "identities: must be an object of strings"
    if not isinstance(out.get("properties", {}), dict):
        return "properties: must be an object"
    if "occurred_at" in out:
        try:
            out["occurred_at"] = datetime.fromisoformat(str(out["occurred_at"]).replace("Z", "+00:00"))
        except ValueError:
            return f"occurred_at: '{out['occurred_at']}' is not an ISO 8601 time (2026-11-30T09:00:00Z)"
    return out
