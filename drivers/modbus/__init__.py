"""Modbus drivers. Pure parts (:mod:`.decode`, :mod:`.plan`, :mod:`.settings`, :mod:`.config`)
import no protocol library; :mod:`.tcp` and :mod:`.rtu` open the line, from settings alone (no
pydantic: see :mod:`.settings`)."""
