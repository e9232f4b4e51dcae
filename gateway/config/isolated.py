"""Reading the config file in a short-lived child process, for the process that runs it.

Composing YAML allocates tens of thousands of short-lived objects (tokens, events, nodes, the
line of every key path), and the config models are allocated among them. Freed, they leave the
long-lived process's memory fragmented for its life: a site of 100 meters with their 30 points
listed held +15 MB of RSS that way. So ``run`` and its reloads have a child read, compose and
validate the text (every mistake named with its line, exactly as ``check`` does) and hand back
the plain data it validated (in :mod:`marshal`'s format: built in, where importing pickle
would cost this process 0.2 MB); this process validates that data again, which allocates the
models and little else.

The child is a convenience, not a dependency: if it cannot start, dies, holds data marshal
cannot carry (a YAML timestamp), or hands back data this process does not accept (it should
never), the text is read here instead. Same config,
same errors; only more memory.

    python -m gateway.config.isolated SOURCE < config.yaml   # the child: its answer on stdout
"""

from __future__ import annotations

import logging
import marshal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.fields import sharing_context
from gateway.config.loader import parse_config, read_config_text, read_document, validate_document
from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError

log = logging.getLogger(__name__)

#: Starting Python, importing the models and validating a large site takes a few seconds on a
#: Raspberry Pi; a child still running after this is stuck, and the text is read here instead.
CHILD_TIMEOUT = 60.0
#: What the child answers: the data it validated, or the lines of its mistakes.
_KINDS = frozenset({"config", "problems"})


def load_config_isolated(path: Path) -> GatewayConfig:
    """:func:`gateway.config.loader.load_config`, the YAML read in a child process."""
    return parse_config_isolated(read_config_text(path), source=str(path))


def parse_config_isolated(text: str, source: str = "<config>") -> GatewayConfig:
    """:func:`gateway.config.loader.parse_config`, the YAML read in a child process."""
    answer = _ask_child(text, source)
    if answer is not None:
        kind, value = answer
        if kind == "problems":
            raise ConfigError(list(value))
        try:
            config = GatewayConfig.model_validate(value, context=sharing_context())
        except ValidationError:
            log.debug("the child's config data did not validate here; reading %s here", source)
        else:
            if not config.reference_problems():
                return config
    return parse_config(text, source)


def _ask_child(text: str, source: str) -> tuple[str, Any] | None:
    """The child's answer: ``("config", plain data)`` or ``("problems", lines)``; ``None``
    when there is no answer to trust."""
    try:
        # -P: the working directory is not put on the module path (`-m` would), so whatever
        # lies where the gateway was started from cannot stand in for our module.
        done = subprocess.run(  # noqa: S603 - this interpreter, our own module, no shell
            [sys.executable, "-P", "-m", __name__, source],
            input=text.encode(),
            capture_output=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.debug("the config reader could not run (%r); reading %s here", exc, source)
        return None
    if done.returncode != 0:
        log.debug(
            "the config reader ended with %d (%s); reading %s here",
            done.returncode,
            done.stderr.decode(errors="replace")[-500:],
            source,
        )
        return None
    try:
        # The bytes come from our own module in a child we started, never from outside.
        answer = marshal.loads(done.stdout)  # noqa: S302
    except (EOFError, ValueError, TypeError) as exc:
        log.debug("the config reader's answer is unreadable (%r); reading %s here", exc, source)
        return None
    if not isinstance(answer, tuple) or len(answer) != 2 or answer[0] not in _KINDS:
        log.debug("the config reader could not hand %s over; reading it here", source)
        return None
    return str(answer[0]), answer[1]


def _child(source: str) -> int:
    text = sys.stdin.buffer.read().decode("utf-8")
    try:
        located = read_document(text, source)
        # The data as composed, before validating: what validation saw, whatever it did to it.
        try:
            answer = marshal.dumps(("config", located.data))
        except ValueError:  # a date or time (YAML's timestamps): the parent reads the text
            answer = marshal.dumps(("unsent",))
        validate_document(located, source)
    except ConfigError as exc:
        answer = marshal.dumps(("problems", exc.problems))
    sys.stdout.buffer.write(answer)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
