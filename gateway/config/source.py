"""Reading a config file's text, before any YAML: its size and encoding, with errors that name
the file. Free of pydantic and YAML, so the running gateway reads its file without them."""

from __future__ import annotations

from pathlib import Path

from gateway.errors import ConfigError

#: A config is a few kilobytes; a large site's (300 meters of 60 points, one key a line) is under
#: 2 MiB. A bigger file is not a config (a log, an image), and parsing it would hold the start.
MAX_FILE_BYTES = 2 * 2**20


def read_config_text(path: Path) -> str:
    try:
        with path.open("rb") as file:
            # One byte past the cap tells "too large" without reading all of a huge file (or of
            # /dev/zero).
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([too_large(str(path))])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not a UTF-8 text file ({exc.reason})"]) from exc


def too_large(source: str) -> str:
    return (
        f"{source}: the file is larger than {MAX_FILE_BYTES // 2**20} MiB; a config is a few "
        "kilobytes. Is it the right file?"
    )
