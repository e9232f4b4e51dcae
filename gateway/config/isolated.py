"""Reading the config file in a short-lived child process, for the process that runs it.

The running gateway holds its config as settings (:mod:`gateway.settings`), never as the
pydantic models that validate it: importing pydantic and YAML, building the validators and
composing the document would cost this process about 13 MB for its life, and the tens of
thousands of short-lived objects composing allocates leave its memory fragmented besides. So
``run`` and its reloads have a child read, compose and validate the text (every mistake named
with its line, exactly as ``check`` does) and hand back the settings as a tree of plain data (in
:mod:`marshal`'s format: built in, where importing pickle would cost this process 0.2 MB).

The child is a convenience, not a dependency: if it cannot start, dies, or hands back a tree
this process cannot build, the text is read here instead, models and all. Same config, same
errors; only more memory.

This module imports neither pydantic nor YAML, but in the child and in that fallback.

    python -m gateway.config.isolated SOURCE < config.yaml   # the child: its answer on stdout
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import subprocess
import sys
from pathlib import Path

from gateway.config.source import read_config_text
from gateway.errors import ConfigError
from gateway.settings import GatewaySettings, settings_from_tree

log = logging.getLogger(__name__)

#: Starting Python, importing the models and validating a large site takes a few seconds on a
#: Raspberry Pi; a child still running after this is stuck, and the text is read here instead.
CHILD_TIMEOUT = 60.0
#: A killed child is gone within moments; a stop does not wait longer for it to be reaped.
_KILLED_EXIT = 1.0
#: What the child answers: the settings it validated, or the lines of its mistakes.
_KINDS = frozenset({"settings", "problems"})


def read_settings(path: Path) -> GatewaySettings:
    """The settings of the config file ``path``. Raises :class:`ConfigError` listing every
    mistake found, as ``check`` does. For ``run``'s start; a running gateway awaits
    :func:`read_settings_async`."""
    return parse_settings(read_config_text(path), source=str(path))


def parse_settings(text: str, source: str = "<config>") -> GatewaySettings:
    """The settings of config ``text`` (``source`` names it in errors)."""
    try:
        done = subprocess.run(  # noqa: S603 - this interpreter, our own module, no shell
            _child_command(source),
            input=text.encode(),
            capture_output=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.debug("the config reader could not run (%r)", exc)
    else:
        settings = _settings_answered(done.returncode, done.stdout, done.stderr)
        if settings is not None:
            return settings
    return _parse_here(text, source)


async def read_settings_async(path: Path) -> GatewaySettings:
    """:func:`read_settings`, for a running gateway (a reload): off the event loop, and
    cancellable: a stop during a reload ends the child at once instead of waiting for it."""
    text = await asyncio.to_thread(read_config_text, path)
    return await parse_settings_async(text, source=str(path))


async def parse_settings_async(text: str, source: str = "<config>") -> GatewaySettings:
    """:func:`parse_settings`, for a running gateway (see :func:`read_settings_async`)."""
    try:
        child = await asyncio.create_subprocess_exec(
            *_child_command(source),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except (OSError, ValueError) as exc:
        log.debug("the config reader could not run (%r)", exc)
    else:
        try:
            async with asyncio.timeout(CHILD_TIMEOUT):
                stdout, stderr = await child.communicate(text.encode())
        except TimeoutError:
            log.debug("the config reader took longer than %.0f s", CHILD_TIMEOUT)
        else:
            settings = _settings_answered(child.returncode, stdout, stderr)
            if settings is not None:
                return settings
        finally:
            if child.returncode is None:  # timed out, or we are cancelled (a stop)
                child.kill()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_KILLED_EXIT):
                        await child.wait()
    # Rare (no child could run): the models' import and validation, off the loop.
    return await asyncio.to_thread(_parse_here, text, source)


def _child_command(source: str) -> list[str]:
    # -P: the working directory is not put on the module path (`-m` would), so whatever lies
    # where the gateway was started from cannot stand in for our module.
    return [sys.executable, "-P", "-m", __name__, source]


def _settings_answered(
    returncode: int | None, stdout: bytes, stderr: bytes
) -> GatewaySettings | None:
    """The settings the child answered with; raises :class:`ConfigError` with the mistakes
    it found; ``None`` when there is no answer to trust (then the text is read here)."""
    if returncode != 0:
        log.debug(
            "the config reader ended with %s (%s)",
            returncode,
            stderr.decode(errors="replace")[-500:],
        )
        return None
    try:
        # The bytes come from our own module in a child we started, never from outside.
        answer = marshal.loads(stdout)  # noqa: S302
    except (EOFError, ValueError, TypeError) as exc:
        log.debug("the config reader's answer is unreadable (%r)", exc)
        return None
    if not isinstance(answer, tuple) or len(answer) != 2 or answer[0] not in _KINDS:
        log.debug("the config reader's answer is not one (%.60r)", answer)
        return None
    kind, value = answer
    if kind == "problems":
        raise ConfigError([str(line) for line in value])
    try:
        return settings_from_tree(value)
    except (TypeError, ValueError, ImportError, AttributeError) as exc:
        log.debug("the config reader's settings did not build here (%r)", exc)
        return None


def _parse_here(text: str, source: str) -> GatewaySettings:
    log.debug("reading %s in this process", source)
    # Imported only now: see the module's docstring.
    from gateway.config.handover import to_settings  # noqa: PLC0415
    from gateway.config.loader import parse_config  # noqa: PLC0415

    return to_settings(parse_config(text, source))


def _child(source: str) -> int:
    from gateway.config.handover import settings_tree  # noqa: PLC0415
    from gateway.config.loader import parse_config  # noqa: PLC0415

    text = sys.stdin.buffer.read().decode("utf-8")
    try:
        config = parse_config(text, source)
    except ConfigError as exc:
        answer = marshal.dumps(("problems", exc.problems))
    else:
        answer = marshal.dumps(("settings", settings_tree(config)))
    sys.stdout.buffer.write(answer)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
