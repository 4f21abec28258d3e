"""Drives miners with pyasic, the Python miner-management library, and reports what it saw.

Usage: check.py ACTION ADDRESS...

ACTION is one of:
  read        detect and read only;
  stop        stop_mining(), then read;
  resume      resume_mining(), then read;
  limit=W     set_power_limit(W), then read.

For each address, in order: ``pyasic.get_miner(address)``, the action, ``get_data()``. Prints
one JSON object per address on stdout (one line each) with what pyasic detected (class, make,
model, firmware), what it read (hashrate in TH/s, wattage in W, boards, chips, fans, ...) and
what the action returned. Every Python warning raised on the way (for example pyasic's
"Partially supported miner found") is listed under "warnings", so the caller can require none.

Exits 1 with a message on stderr at the first miner pyasic cannot detect, or on any exception.
Used by services/minersim/tests/pyasic.rs; runs with any Python that has pyasic installed.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
import traceback
import warnings

import pyasic


def ths(rate) -> float | None:
    """A pyasic hashrate (any algorithm, any unit) in TH/s."""
    if rate is None:
        return None
    return float(rate.rate) * float(rate.unit.value) / 1e12


def text(value) -> str | None:
    return None if value is None else str(value)


async def act(miner, action: str):
    if action == "read":
        return None
    if action == "stop":
        return await miner.stop_mining()
    if action == "resume":
        return await miner.resume_mining()
    if action.startswith("limit="):
        return await miner.set_power_limit(int(action.removeprefix("limit=")))
    raise ValueError(f"unknown action {action!r}")


async def check(address: str, action: str) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        miner = await pyasic.get_miner(address)
        if miner is None:
            raise LookupError(f"pyasic detected no miner at {address}")
        returned = await act(miner, action)
        data = await miner.get_data()
    boards = data.hashboards or []
    return {
        "address": address,
        "pyasic": importlib.metadata.version("pyasic"),
        "class": type(miner).__name__,
        "bases": [cls.__name__ for cls in type(miner).__mro__],
        "make": text(data.make),
        "model": text(data.model),
        "firmware": text(data.firmware),
        "algo": text(data.algo),
        "supports": {
            "shutdown": bool(getattr(miner, "supports_shutdown", False)),
            "power_modes": bool(getattr(miner, "supports_power_modes", False)),
            "presets": bool(getattr(miner, "supports_presets", False)),
        },
        "action": action,
        "returned": returned,
        "hashrate_ths": ths(data.hashrate),
        "expected_hashrate_ths": ths(data.expected_hashrate),
        "wattage_w": data.wattage,
        "wattage_limit_w": data.wattage_limit,
        "is_mining": data.is_mining,
        "boards": len(boards),
        "board_hashrate_ths": [ths(b.hashrate) for b in boards],
        "chips": data.total_chips,
        "expected_hashboards": data.expected_hashboards,
        "expected_chips": data.expected_chips,
        "fans": [fan.speed for fan in data.fans or []],
        "expected_fans": data.expected_fans,
        "mac": data.mac,
        "hostname": data.hostname,
        "serial_number": data.serial_number,
        "fw_ver": data.fw_ver,
        "api_ver": data.api_ver,
        "uptime_s": data.uptime,
        "pools": len(data.pools or []),
        "errors": [text(e) for e in data.errors or []],
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }


async def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    action, addresses = argv[1], argv[2:]
    for address in addresses:
        try:
            report = await check(address, action)
        except Exception:
            print(
                f"check.py: pyasic failed on {address} (action {action}):\n"
                f"{traceback.format_exc()}",
                file=sys.stderr,
            )
            return 1
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))
