#!/usr/bin/env python3
"""Generate conformance/expected-{server,client}.json from kosoku's case list.

The expectation is a rule, not a recorded run:

* every case outside 12.* and 13.* expects behavior OK / behaviorClose OK;
* the cases the Autobahn suite itself marks INFORMATIONAL (7.1.6, 7.13.1,
  7.13.2) expect INFORMATIONAL / INFORMATIONAL: their case code overwrites
  both verdicts unconditionally, whatever the peer does;
* 12.* and 13.* (permessage-deflate) expect UNIMPLEMENTED / OK: kosoku
  reports that when the peer declines compression and then completes the
  normal close handshake (close code 1000). With --deflate they expect
  OK / OK instead, for when wsx implements permessage-deflate.

Must run under a Python that has kosoku installed (scripts/autobahn's venv:
target/autobahn-venv/bin/python). Usage:

    target/autobahn-venv/bin/python scripts/autobahn_expect.py [--deflate]
    target/autobahn-venv/bin/python scripts/autobahn_expect.py --check [--deflate]
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

EXPECTED_CASE_COUNT = 517
DEFLATE_GROUPS = ("12", "13")
INFORMATIONAL_CASES = ("7.1.6", "7.13.1", "7.13.2")
ROLES = ("server", "client")

OK = "OK"
INFORMATIONAL = "INFORMATIONAL"
UNIMPLEMENTED = "UNIMPLEMENTED"


def _sort_key(case_id: str) -> list[int]:
    return [int(p) for p in case_id.split(".")]


def load_cases() -> dict[str, type]:
    try:
        from kosoku.cases import CASES  # type: ignore[import-not-found]
    except ImportError as exc:
        sys.exit(
            f"autobahn_expect: cannot import kosoku ({exc}); run me with "
            "target/autobahn-venv/bin/python (scripts/autobahn creates it)"
        )
    return dict(CASES)


def informational_in_source(cases: dict[str, type]) -> set[str]:
    """Cases whose own code forces behavior = Case.INFORMATIONAL."""
    found = set()
    for case_id, cls in cases.items():
        try:
            src = inspect.getsource(cls)
        except (OSError, TypeError):
            continue  # generated classes (12.*/13.*, 6.x generators) have none
        if "behavior = Case.INFORMATIONAL" in src:
            found.add(case_id)
    return found


def expectations(case_ids: list[str], deflate: bool) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for case_id in sorted(case_ids, key=_sort_key):
        group = case_id.split(".")[0]
        if group in DEFLATE_GROUPS:
            exp = (OK, OK) if deflate else (UNIMPLEMENTED, OK)
        elif case_id in INFORMATIONAL_CASES:
            exp = (INFORMATIONAL, INFORMATIONAL)
        else:
            exp = (OK, OK)
        out[case_id] = {"behavior": exp[0], "behaviorClose": exp[1]}
    return out


def render(exp: dict[str, dict[str, str]]) -> str:
    """One case per line (diff-friendly), numeric case order, valid JSON."""
    lines = []
    for case_id, v in exp.items():
        lines.append(
            f'  "{case_id}": {{"behavior": "{v["behavior"]}", '
            f'"behaviorClose": "{v["behaviorClose"]}"}}'
        )
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--deflate",
        action="store_true",
        help="expect OK/OK for 12.*/13.* (wsx negotiates permessage-deflate)",
    )
    ap.add_argument(
        "--out-dir",
        default=os.path.join(here, "..", "conformance"),
        help="where expected-{server,client}.json go (default: conformance/)",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the files differ from what would be generated",
    )
    args = ap.parse_args()

    cases = load_cases()
    if len(cases) != EXPECTED_CASE_COUNT:
        print(
            f"autobahn_expect: kosoku has {len(cases)} cases, expected "
            f"{EXPECTED_CASE_COUNT}; review the rule before regenerating",
            file=sys.stderr,
        )
        return 1
    info = informational_in_source(cases)
    if info != set(INFORMATIONAL_CASES):
        print(
            f"autobahn_expect: kosoku's INFORMATIONAL cases are {sorted(info)}, "
            f"rule says {list(INFORMATIONAL_CASES)}",
            file=sys.stderr,
        )
        return 1

    text = render(expectations(list(cases), args.deflate))
    status = 0
    for role in ROLES:
        path = os.path.normpath(os.path.join(args.out_dir, f"expected-{role}.json"))
        if args.check:
            try:
                with open(path, encoding="utf-8") as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current != text:
                print(f"autobahn_expect: {path} is out of date", file=sys.stderr)
                status = 1
            else:
                print(f"autobahn_expect: {path} up to date")
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"autobahn_expect: wrote {path} ({len(cases)} cases)")
    return status


if __name__ == "__main__":
    sys.exit(main())
