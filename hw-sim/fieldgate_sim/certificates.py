"""Throwaway certificates for a TLS broker on loopback, made with the openssl command: a CA, a
server certificate for 127.0.0.1 (or for another name, to test hostname checks), client
certificates, and an expired one. EC P-256 keys: milliseconds each."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    found = shutil.which("openssl")
    if found is None:
        raise FileNotFoundError("openssl is not installed: apt-get install openssl")
    subprocess.run(  # noqa: S603 - our own arguments
        [found, *args], cwd=cwd, check=True, capture_output=True, timeout=60
    )


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class CertificateAuthority:
    """A CA in ``directory`` that issues certificates into it."""

    def __init__(self, directory: Path, name: str = "fieldgate test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert = directory / "ca.crt"
        self.key = directory / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(self.key), "-out", str(self.cert), "-subj", f"/CN={name}",
            "-days", "2", cwd=directory,
        )  # fmt: skip
        # `openssl ca` (the one way to set a validity in the past) needs a little database.
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text("1000\n")
        (directory / "ca.cnf").write_text(
            "[ca]\ndefault_ca = test\n"
            "[test]\n"
            f"dir = {directory}\ndatabase = $dir/index.txt\nserial = $dir/serial\n"
            "new_certs_dir = $dir\ncertificate = $dir/ca.crt\nprivate_key = $dir/ca.key\n"
            "default_md = sha256\npolicy = anything\ncopy_extensions = copy\n"
            "unique_subject = no\n"
            "[anything]\ncommonName = supplied\n"
        )

    def issue(
        self,
        name: str,
        *,
        hosts: tuple[str, ...] = (),
        expired: bool = False,
    ) -> Issued:
        """A key and a certificate for ``name``; ``hosts`` become its subjectAltNames (IP
        addresses as IP entries). ``expired``: valid only on one day in 2020."""
        key = self.directory / f"{name}.key"
        request = self.directory / f"{name}.csr"
        cert = self.directory / f"{name}.crt"
        alt_names = ",".join(
            f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}"
            for host in hosts
        )
        extra = ["-addext", f"subjectAltName={alt_names}"] if alt_names else []
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}", *extra,
            cwd=self.directory,
        )  # fmt: skip
        validity = (
            ["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"]
            if expired
            else ["-days", "2"]
        )
        _openssl(
            "ca", "-batch", "-config", "ca.cnf", "-in", str(request), "-out", str(cert),
            "-notext", *validity, cwd=self.directory,
        )  # fmt: skip
        # Read by a broker that drops to its own user when started as root.
        for path in (key, cert, self.cert):
            path.chmod(0o644)
        return Issued(cert, key)
