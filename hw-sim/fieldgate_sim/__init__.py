"""Hardware simulators for fieldgate: field meters served over real protocols on loopback.

`fieldgate_sim.sdm630` is the Eastron SDM630 register map and a deterministic value model;
`fieldgate_sim.modbus_server` serves simulated devices over Modbus TCP with pymodbus;
`fieldgate_sim.cli` is the `fieldgate-sim` command.
"""
