"""``fieldgate buffer``: what waits in the buffer, and ``fieldgate buffer export`` to rescue it by
hand (JSON lines or CSV). Both read through a read-only connection (sqlite-utils on top), so
they work beside the running daemon: in WAL mode a reader never blocks its writes.

An export holds one read transaction while it runs; the daemon's checkpoints wait for it to
end (its WAL grows meanwhile), which is the price of a consistent export.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.config import DEFAULT_CONFIG_PATH
from gateway.upstream.json_dialect import iso_utc_ms

if TYPE_CHECKING:
    import sqlite_utils

    from gateway.config.model import GatewayConfig
    from gateway.readings import Layout, PointValue

EXPORT_FORMATS = ("jsonl", "csv")
#: sysexits.h EX_IOERR: the export could not be written.
EX_IOERR = 74


def add_buffer_parser(commands: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """The ``buffer`` command and its ``export`` sub-command, on the CLI's sub-parsers."""
    report = commands.add_parser(
        "buffer",
        help="what waits in the buffer (rows, oldest, newest, bytes, dropped)",
        parents=list(parents),
    )
    _add_source(report, default=None)
    actions = report.add_subparsers(dest="buffer_command", metavar="ACTION")
    export = actions.add_parser("export", help="write buffered readings as JSON lines or CSV")
    # SUPPRESS: a -c given before `export` is kept when none is given after it.
    _add_source(export, default=argparse.SUPPRESS)
    export.add_argument("--since", type=_moment, help="read at or after (ISO 8601; UTC if no zone)")
    export.add_argument("--until", type=_moment, help="read before (ISO 8601; UTC if no zone)")
    export.add_argument(
        "--device", action="append", default=[], help="only this device (repeatable)"
    )
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl")
    export.add_argument("-o", "--output", type=Path, help="file to write; default stdout")


def _add_source(parser: argparse.ArgumentParser, default: Any) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("-c", "--config", type=Path, default=default, help="the YAML config file")
    source.add_argument(
        "--file", type=Path, default=default, help="a buffer file (a moved-aside one too)"
    )


def _moment(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (2026-11-25 or 2026-11-25T19:46:20Z)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@contextlib.contextmanager
def open_read_only(path: Path) -> Iterator[sqlite_utils.Database]:
    # Imported here: the CLI imports this module for its parser before `run` can catch a
    # SIGTERM, and sqlite-utils is only for this command.
    import sqlite_utils  # noqa: PLC0415

    if not path.is_file():
        raise FileNotFoundError(f"no buffer file at {path}")
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield sqlite_utils.Database(connection)
    finally:
        connection.close()


def report(path: Path, out: TextIO) -> None:
    """Rows waiting per device with the oldest and newest, bytes on disk, drops per device."""
    with open_read_only(path) as db:
        per_device = list(
            db.query(
                "SELECT device, count(*) AS waiting, min(read_at_ms) AS oldest, "
                "max(read_at_ms) AS newest, min(seq) AS first_seq, max(seq) AS last_seq "
                "FROM readings GROUP BY device ORDER BY device"
            )
        )
        dropped = list(
            db.query("SELECT device, reason, count FROM dropped ORDER BY device, reason")
        )
        events = next(iter(db.query("SELECT count(*) AS n FROM events")))["n"]
        # A file from before the quarantine table has none (the report opens read-only).
        quarantined = (
            list(db.query("SELECT seq, device, error FROM quarantine ORDER BY seq"))
            if db["quarantine"].exists()
            else []
        )
    on_disk = sum(
        Path(f"{path}{suffix}").stat().st_size
        for suffix in ("", "-wal", "-shm")
        if Path(f"{path}{suffix}").exists()
    )
    waiting = sum(row["waiting"] for row in per_device)
    out.write(f"buffer {path}: {waiting} reading(s) waiting, {on_disk} bytes on disk\n")
    if events:
        out.write(f"{events} event(s) waiting for the uplink\n")
    rows = [("device", "waiting", "oldest", "newest", "seq")]
    rows += [
        (
            row["device"],
            str(row["waiting"]),
            iso_utc_ms(row["oldest"]),
            iso_utc_ms(row["newest"]),
            f"{row['first_seq']}..{row['last_seq']}",
        )
        for row in per_device
    ]
    if per_device:
        _table(rows, out)
    if dropped:
        out.write("dropped:\n")
        _table(
            [("device", "reason", "count")]
            + [(row["device"], row["reason"], str(row["count"])) for row in dropped],
            out,
        )
    else:
        out.write("dropped: none\n")
    if quarantined:
        # Not sent: each was reported upstream as a 'quarantined' event naming its seq.
        out.write("quarantined (no longer decode; kept in the quarantine table):\n")
        _table(
            [("seq", "device", "error")]
            + [(str(row["seq"]), str(row["device"]), str(row["error"])) for row in quarantined],
            out,
        )


def _table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")


def export(
    path: Path,
    out: TextIO,
    *,
    since_ms: int | None,
    until_ms: int | None,
    devices: Sequence[str],
    output_format: str,
) -> tuple[int, list[int]]:
    """Write the matching readings, oldest first; returns how many, and the seqs of the rows
    left out because they do not decode (a damaged file: the rest is rescued)."""

    where = ["1"]
    params: list[Any] = []
    if since_ms is not None:
        where.append("read_at_ms >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append("read_at_ms < ?")
        params.append(until_ms)
    if devices:
        where.append(f"device IN ({', '.join('?' for _ in devices)})")
        params.extend(devices)
    writer = csv.writer(out) if output_format == "csv" else None
    if writer is not None:
        writer.writerow(["seq", "device", "ts", "quality", "point", "value", "unit"])
    count = 0
    skipped: list[int] = []
    with open_read_only(path) as db:
        layouts = _layouts(db)
        for row in db["readings"].rows_where(" AND ".join(where), params, order_by="seq"):
            try:
                points = _row_points(row, layouts)
                ts = iso_utc_ms(row["read_at_ms"])
            except (ValueError, TypeError, OverflowError):
                skipped.append(row["seq"])
                continue
            count += 1
            if writer is not None:
                for point in points:
                    writer.writerow([row["seq"], row["device"], ts, row["quality"], *_cells(point)])
            else:
                document = {
                    "seq": row["seq"],
                    "device": row["device"],
                    "ts": ts,
                    "quality": row["quality"],
                    "values": {p.name: {"value": p.value, "unit": p.unit} for p in points},
                }
                out.write(json.dumps(document, separators=(",", ":")) + "\n")
    return count, skipped


def _row_points(row: dict[str, Any], layouts: dict[int, Layout]) -> tuple[PointValue, ...]:
    from gateway.buffer import decode_point_values  # noqa: PLC0415 - as sqlite-utils

    # A file from before layouts (moved aside, say) has no layout column: rows of triples.
    ident = row.get("layout")
    layout = None if ident is None else layouts.get(ident)
    if ident is not None and layout is None:
        raise ValueError(f"layout {ident} is not in the layouts table")
    return decode_point_values(row["point_values"], layout)


def _layouts(db: sqlite_utils.Database) -> dict[int, Layout]:
    """The file's layouts by id; one that does not decode is left out (its rows with it)."""
    from gateway.buffer import parse_layout  # noqa: PLC0415 - as sqlite-utils

    layouts: dict[int, Layout] = {}
    if db["layouts"].exists():
        for row in db.query("SELECT id, points FROM layouts"):
            with contextlib.suppress(ValueError, TypeError):
                layouts[row["id"]] = parse_layout(row["points"])
    return layouts


def _cells(point: PointValue) -> tuple[str, object, str | None]:
    return point.name, point.value, point.unit


def run(args: argparse.Namespace, path: Path) -> int:
    """The ``buffer`` command, on the buffer file at ``path``."""
    try:
        if getattr(args, "buffer_command", None) != "export":
            report(path, sys.stdout)
            return 0
        with contextlib.ExitStack() as stack:
            out: TextIO = (
                stack.enter_context(args.output.open("w", newline="", encoding="utf-8"))
                if args.output
                else sys.stdout
            )
            count, skipped = export(
                path,
                out,
                since_ms=args.since,
                until_ms=args.until,
                devices=args.device,
                output_format=args.format,
            )
        print(f"{count} reading(s) exported", file=sys.stderr)
        if skipped:
            shown = ", ".join(str(seq) for seq in skipped[:20])
            more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
            print(
                f"{len(skipped)} row(s) left out: they do not decode (seq {shown}{more})",
                file=sys.stderr,
            )
    except (OSError, sqlite3.Error) as exc:
        print(f"cannot read the buffer {path}: {exc}", file=sys.stderr)
        return EX_IOERR
    return 0


def run_command(args: argparse.Namespace, load_config: Callable[[Path], GatewayConfig]) -> int:
    """``fieldgate buffer``: on the file the config names (``-c``), or on one named directly.
    ``load_config`` reports a bad config itself and ends the command."""
    path: Path | None = getattr(args, "file", None)
    config_path: Path | None = getattr(args, "config", None)
    if path is None:
        # The CLI's convention: the installed config unless -c names another.
        path = load_config(config_path or DEFAULT_CONFIG_PATH).buffer.path
    return run(args, path)
