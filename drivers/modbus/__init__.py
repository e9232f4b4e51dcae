"""Modbus drivers. Pure parts (:mod:`.decode`, :mod:`.plan`, :mod:`.config`) import no
protocol library; :mod:`.tcp` is the one that talks pymodbus."""
