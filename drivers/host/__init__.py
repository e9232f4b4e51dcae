"""The gateway box itself as a device: its own health (SoC temperature, free space where the
buffer lives, load, memory, uptime, Raspberry Pi power and throttling flags) read from /sys,
/proc and the filesystem. :mod:`.sources` holds the blocking reads and pure decoding;
:mod:`.driver` is the bus driver."""
