"""One interpreter build's observable behaviour on generated programs, as digests.

``python -m dprobes.tests.flavour_run --seed S --programs N`` draws programs, contexts
and start states with ``rpn_gen`` from a seeded RNG, fires them on the interpreter, and
prints one JSON object: the build that ran (``vm.flavour.describe``) and, per program
(``digests``), a SHA-256 of everything observable (the results and
the whole VM and context state after each fire), or "runaway" when the interpreter did
not finish within the step budget. ``test_flavour`` runs it under the compiled and the
pure-Python build and requires identical digests.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
from typing import Any

from dprobes.tests import rpn_gen
from dprobes.vm import flavour


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it, keeping every type distinction the builds could make."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if dataclasses.is_dataclass(value):
        return [type(value).__name__, _plain(dataclasses.asdict(value))]
    if value is None or type(value) in (bool, int, str):
        return value
    return repr(value)  # enums, and anything else, by name and type


def digest(seed: int) -> str:
    rng = random.Random(seed)
    c = rpn_gen.RandomChooser(rng)
    spec = rpn_gen.context_spec(c)
    prog = rpn_gen.program(c, rpn_gen.region_addresses(spec))
    start = rpn_gen.start_state(c, prog)
    tier = rpn_gen.make_tier(prog, "interp", spec, start)
    seen = []
    try:
        for probe in (rng.randrange(len(prog.probes)) for _ in range(rng.randint(1, 3))):
            result = rpn_gen.fire_interp(tier, probe, budget=3000)
            seen.append([_plain(rpn_gen.result_dict(result)), _plain(rpn_gen.observable(tier))])
    except rpn_gen.Runaway:
        return "runaway"
    return hashlib.sha256(json.dumps(seen).encode()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dprobes.tests.flavour_run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--programs", type=int, default=500)
    args = parser.parse_args(argv)
    print(
        json.dumps(
            {
                "build": flavour.describe(),
                "digests": [digest(args.seed * 1_000_003 + i) for i in range(args.programs)],
            }
        )
    )


if __name__ == "__main__":
    main()
