"""SIGHUP reloads the config file: one with a mistake is refused with the reason in the log and
the running config goes on; a good one takes over (a new device starts, the old one goes on) with
nothing lost and the sequence numbers going on from where they were."""

from __future__ import annotations

import signal
from pathlib import Path

from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.mosquitto import MosquittoBroker

from tests.harness import GatewayProcess, gateway_yaml, nothing_lost, start_gateway


def box_devices(*names: str) -> str:
    return "".join(
        f"- {{name: {name}, bus: this-box, interval: 200ms, filesystem: /}}\n" for name in names
    )


def count(fleet: FleetSubscriber, device: str) -> int:
    return sum(1 for reading in fleet.readings() if reading["device"] == device)


def test_sighup_refuses_a_broken_config_and_takes_a_good_one(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    def config(*devices: str) -> str:
        return gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            "- {name: this-box, type: host}\n",
            box_devices(*devices),
        )

    gateway = start_gateway(gateways, tmp_path, config("box-a"))
    assert gateway.process is not None
    assert fleet.wait_for(lambda f: count(f, "box-a") >= 3, timeout=30), gateway.log()

    gateway.config_path.write_text(config("box-a").replace("interval: 200ms", "interval: soon"))
    gateway.process.send_signal(signal.SIGHUP)
    assert gateway.wait_for_log("the running config stays", timeout=30), gateway.log()
    assert "devices[0].interval" in gateway.log()
    before = count(fleet, "box-a")
    assert fleet.wait_for(lambda f: count(f, "box-a") >= before + 3, timeout=30), gateway.log()

    gateway.config_path.write_text(config("box-a", "box-b"))
    gateway.process.send_signal(signal.SIGHUP)
    assert gateway.wait_for_log("reloading the config", timeout=30), gateway.log()
    assert fleet.wait_for(lambda f: count(f, "box-b") >= 3, timeout=30), gateway.log()
    after = count(fleet, "box-a")
    assert fleet.wait_for(lambda f: count(f, "box-a") >= after + 3, timeout=30), gateway.log()
    assert gateway.process.poll() is None
    assert gateway.stop() == 0

    nothing_lost(tmp_path / "buffer.db", fleet)
    assert gateway.log().count("fieldgate running") == 2
    assert "Traceback" not in gateway.log()
