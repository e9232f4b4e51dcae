"""Who we are to the broker, and how we know it is the broker: TLS (a CA, or the system's store;
a client certificate for mutual TLS) and the password, read from a file or a systemd credential
each time a connection is made, so a rotated secret is picked up without a restart.

Everything here reads files, so the session calls it on its connect thread, never on the event
loop. No secret is ever put in a log line or an exception message.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import BrokerRefused
from gateway.settings import MqttSettings


@dataclass(frozen=True, slots=True)
class TlsSettings:
    #: None: the system's CA store (a public broker such as AWS IoT or HiveMQ Cloud).
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """An SSL context for the client side. Raises :class:`BrokerRefused` (retrying cannot
        help until someone fixes the files) naming the file and the key of the config."""
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise _setup_error("mqtt.tls.ca_file", self.ca_file, exc) from None
        if self.cert_file is not None:
            try:
                context.load_cert_chain(
                    str(self.cert_file), str(self.key_file) if self.key_file else None
                )
            except (OSError, ssl.SSLError) as exc:
                raise _setup_error("mqtt.tls.cert_file/key_file", self.cert_file, exc) from None
        # The certificate chain is always verified; only the name check can be switched off.
        context.check_hostname = self.verify_hostname
        return context


#: Where systemd/fieldgate.service loads the ``mqtt-password`` credential from.
_UNIT_CREDENTIAL_FILE = "/etc/fieldgate/credentials/mqtt-password"


@dataclass(frozen=True, slots=True)
class PasswordSource:
    """Where the broker password is kept: a file, or a systemd credential by name."""

    file: Path | None = None
    credential: str | None = None

    def read(self, environ: Mapping[str, str] | None = None) -> str:
        path, key = self._where(os.environ if environ is None else environ)
        try:
            # One line; a trailing newline is what editors and `echo` leave, not the password.
            password = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise BrokerRefused(
                f"cannot read the broker password from {path} ({key}): {reason}",
                reason="password unreadable",
            ) from None
        if not password:
            # The unit's SetCredential= default when its LoadCredential= file is missing.
            where = (
                "the file the unit's LoadCredential= names is missing or empty "
                f"({_UNIT_CREDENTIAL_FILE} in the shipped unit)"
                if self.file is None
                else "the file is empty"
            )
            raise BrokerRefused(
                f"the broker password from {path} ({key}) is empty: {where}",
                reason="password unreadable",
            )
        return password

    def _where(self, environ: Mapping[str, str]) -> tuple[Path, str]:
        if self.file is not None:
            return self.file, "mqtt.password_file"
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory or self.credential is None:
            raise BrokerRefused(
                f"mqtt.password_credential {self.credential!r} needs systemd's "
                "LoadCredential= (no $CREDENTIALS_DIRECTORY); or use mqtt.password_file",
                reason="password unreadable",
            )
        return Path(directory) / self.credential, "mqtt.password_credential"


def _setup_error(key: str, path: Path | None, exc: Exception) -> BrokerRefused:
    where = f" {path}" if path is not None else ""
    return BrokerRefused(
        f"cannot set up TLS from {key}{where}: {exc}; check the file exists, is readable by "
        "the service and is PEM",
        reason="TLS setup failed",
    )


def describe_tls_failure(exc: ssl.SSLError, host: str) -> str:
    """What a technician should check, for the TLS failures seen in the field."""
    text = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "mismatch" in text or "match" in (exc.verify_message or ""):
            return (
                f"the broker's certificate is not for {host!r} ({exc.verify_message}); "
                "check mqtt.host against the certificate's names"
            )
        if "expired" in text:
            return f"the broker's certificate has expired ({exc.verify_message})"
        return (
            f"the broker's certificate is not trusted ({exc.verify_message}); check "
            "mqtt.tls.ca_file"
        )
    if "certificate required" in text or "unknown ca" in text or "bad certificate" in text:
        return (
            f"the broker did not accept our client certificate ({exc.reason}); check "
            "mqtt.tls.cert_file and key_file, and that the broker trusts their CA"
        )
    if "expired" in text:
        return f"the broker refused our expired client certificate ({exc.reason})"
    return f"TLS failed: {exc.reason or text}"


def tls_settings(config: MqttSettings) -> TlsSettings | None:
    tls = config.tls
    if tls is None:
        return None
    return TlsSettings(tls.ca_file, tls.cert_file, tls.key_file, tls.verify_hostname)


def password_source(config: MqttSettings) -> PasswordSource | None:
    if config.password_file is None and config.password_credential is None:
        return None
    return PasswordSource(config.password_file, config.password_credential)
