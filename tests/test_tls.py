"""TLS and credentials against a real Mosquitto with certificates made by the test (openssl):
server-authenticated TLS, mutual TLS, passwords from a file and from a systemd credential; a
wrong CA, a name mismatch, a missing or expired client certificate and a wrong password are each
refused with a line that names the cause; no secret reaches a log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fieldgate_sim.certificates import CertificateAuthority, Issued
from fieldgate_sim.mosquitto import BrokerTls, MosquittoBroker

from gateway.errors import BrokerRefused
from gateway.upstream.security import PasswordSource, TlsSettings
from gateway.upstream.session import MqttSession
from tests.harness import GatewayProcess, gateway_yaml, start_gateway
from tests.wire import CheckedFleet

SECRET = "s3cret-Pa55word-never-logged"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | Issued]:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory / "ca")
    other = CertificateAuthority(directory / "other-ca", name="somebody else's CA")
    return {
        "ca": ca.cert,
        "other_ca": other.cert,
        "server": ca.issue("server", hosts=("127.0.0.1",)),
        "wrong_name": ca.issue("elsewhere", hosts=("broker.elsewhere.example",)),
        "client": ca.issue("gateway-7"),
        "expired": ca.issue("gateway-old", expired=True),
        "stranger": other.issue("stranger"),
    }


def issued(pki: dict[str, Path | Issued], name: str) -> Issued:
    found = pki[name]
    assert isinstance(found, Issued)
    return found


def ca_of(pki: dict[str, Path | Issued], name: str = "ca") -> Path:
    found = pki[name]
    assert isinstance(found, Path)
    return found


@pytest.fixture
def tls_broker(pki) -> Iterator[MosquittoBroker]:
    server = issued(pki, "server")
    tls = BrokerTls(ca_of(pki), server.cert, server.key)
    with MosquittoBroker(users={"gateway-7": SECRET}, tls=tls) as broker:
        yield broker


@pytest.fixture
def mtls_broker(pki) -> Iterator[MosquittoBroker]:
    server = issued(pki, "server")
    tls = BrokerTls(ca_of(pki), server.cert, server.key, require_certificate=True)
    with MosquittoBroker(users={"gateway-7": SECRET}, tls=tls) as broker:
        yield broker


def session(broker: MosquittoBroker, tls: TlsSettings, **options) -> MqttSession:
    return MqttSession(broker.host, broker.port, 5, "gateway-7", tls=tls, **options)


async def connects(broker: MosquittoBroker, tls: TlsSettings, **options) -> None:
    async with session(broker, tls, **options) as connected:
        await connected.publish_and_wait("t/x", b"1", timeout=20)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_tls_with_a_password_file(tls_broker, pki, tmp_path: Path, protocol, caplog):
    caplog.set_level(logging.DEBUG)
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(SECRET + "\n")  # the newline an editor leaves is not part of it
    await connects(
        tls_broker,
        TlsSettings(ca_file=ca_of(pki)),
        username="gateway-7",
        password=PasswordSource(file=password_file),
        protocol=protocol,
    )
    assert SECRET not in caplog.text


async def test_a_password_from_a_systemd_credential(tls_broker, pki, tmp_path, monkeypatch):
    (tmp_path / "mqtt-password").write_text(SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    await connects(
        tls_broker,
        TlsSettings(ca_file=ca_of(pki)),
        username="gateway-7",
        password=PasswordSource(credential="mqtt-password"),
    )


def test_the_units_default_credential_reads_as_missing_with_the_file_to_fill(
    tmp_path: Path,
):
    """What systemd/fieldgate.service's SetCredential= default gives the service when the
    LoadCredential= file is missing: a newline. The gateway says so instead of sending it."""
    (tmp_path / "mqtt-password").write_text("\n")
    source = PasswordSource(credential="mqtt-password")
    with pytest.raises(BrokerRefused) as refused:
        source.read({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "is empty" in str(refused.value)
    assert "/etc/fieldgate/credentials/mqtt-password" in str(refused.value)


async def test_a_wrong_password_is_refused_and_not_logged(tls_broker, pki, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BrokerRefused, match="check the username and password") as refused:
        await connects(
            tls_broker, TlsSettings(ca_file=ca_of(pki)), username="gateway-7", password="wrong"
        )
    assert "wrong" not in str(refused.value)
    assert SECRET not in caplog.text


async def test_a_broker_our_ca_did_not_sign_is_refused(tls_broker, pki):
    with pytest.raises(BrokerRefused, match=r"not trusted .*check mqtt.tls.ca_file"):
        await connects(tls_broker, TlsSettings(ca_file=ca_of(pki, "other_ca")))


@pytest.fixture
def misnamed_broker(pki) -> Iterator[MosquittoBroker]:
    server = issued(pki, "wrong_name")
    with MosquittoBroker(tls=BrokerTls(ca_of(pki), server.cert, server.key)) as broker:
        yield broker


async def test_a_name_mismatch_is_refused_unless_checking_is_off(misnamed_broker, pki):
    with pytest.raises(BrokerRefused, match=r"not for '127.0.0.1'.*check mqtt.host"):
        await connects(misnamed_broker, TlsSettings(ca_file=ca_of(pki)))
    # Lab use: the chain is still verified, only the name is not.
    await connects(misnamed_broker, TlsSettings(ca_file=ca_of(pki), verify_hostname=False))
    with pytest.raises(BrokerRefused, match="not trusted"):
        await connects(
            misnamed_broker, TlsSettings(ca_file=ca_of(pki, "other_ca"), verify_hostname=False)
        )


async def test_mutual_tls(mtls_broker, pki):
    client = issued(pki, "client")
    await connects(
        mtls_broker,
        TlsSettings(ca_file=ca_of(pki), cert_file=client.cert, key_file=client.key),
        username="gateway-7",
        password=SECRET,
    )


@pytest.mark.parametrize("who", [None, "expired", "stranger"])
async def test_mutual_tls_refuses_a_missing_expired_or_foreign_certificate(mtls_broker, pki, who):
    cert = issued(pki, who) if who else None
    tls = TlsSettings(
        ca_file=ca_of(pki),
        cert_file=cert.cert if cert else None,
        key_file=cert.key if cert else None,
    )
    with pytest.raises(BrokerRefused, match=r"check mqtt.tls.cert_file"):
        await connects(mtls_broker, tls, username="gateway-7", password=SECRET)


async def test_unreadable_tls_files_name_the_key_to_fix(tls_broker, tmp_path):
    with pytest.raises(BrokerRefused, match=r"cannot set up TLS from mqtt.tls.ca_file"):
        await connects(tls_broker, TlsSettings(ca_file=tmp_path / "missing.crt"))


def test_the_gateway_delivers_over_mutual_tls_with_a_password_file(
    mtls_broker, pki, tmp_path: Path, gateways: list[GatewayProcess]
):
    client = issued(pki, "client")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "mqtt-password").write_text(SECRET + "\n")
    config = gateway_yaml(
        mtls_broker.port,
        tmp_path / "buffer.db",
        "- {name: this-box, type: host}\n",
        "- {name: box-health, bus: this-box, interval: 200ms, filesystem: /}\n",
    ).replace(
        "  reconnect_max: 1s\n",
        "  reconnect_max: 1s\n"
        "  username: gateway-7\n"
        f"  password_file: {secrets / 'mqtt-password'}\n"
        "  tls:\n"
        f"    ca_file: {ca_of(pki)}\n"
        f"    cert_file: {client.cert}\n"
        f"    key_file: {client.key}\n",
    )
    with CheckedFleet(
        mtls_broker.port,
        ca_file=ca_of(pki),
        client_cert=(client.cert, client.key),
        username="gateway-7",
        password=SECRET,
    ) as fleet:
        gateway = start_gateway(gateways, tmp_path, config + "\n")
        assert fleet.wait_for(lambda f: len(f.readings()) >= 3, timeout=30), gateway.log()
        assert gateway.stop() == 0
    readings = fleet.readings()
    assert {r["device"] for r in readings} == {"box-health"}
    assert SECRET not in gateway.log()
