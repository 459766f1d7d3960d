#!/usr/bin/env python3
"""Compare kosoku (Autobahn) reports with the checked-in expectations.

Standard library only. For each ROLE (server, client, axum) it reads
REPORTS/<role>s/index.json and CONFORMANCE/expected-<role>.json (for axum,
expected-server.json) and fails the role on any case whose behavior or
behaviorClose differs, including a case missing from the report or one the
expectation does not know.

    scripts/autobahn_compare.py [--wall server=12.3] [--error client=MSG] server client

Prints per role the verdict counts and wall time, the mismatches (case id,
expected, got, report file, close codes and duration from the case's JSON),
and a closing line `autobahn: N passed, M failed` (roles). Exit status is 1
if any role failed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from collections import Counter

BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
# kosoku's fallback text when a case ends without the echo it waited for; it
# is printed even when the case ended in milliseconds (read close code/duration).
DEFAULT_TIMEOUT_TEXT = "Did not receive message within 100 seconds"
# kosoku's text for any verdict reached by matching events (also NON-STRICT).
GENERIC_MATCH_TEXT = "Actual events match at least one expected."


def sort_key(case_id: str) -> list[int]:
    try:
        return [int(p) for p in case_id.split(".")]
    except ValueError:
        return [1 << 30]


def parse_kv(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            sys.exit(f"autobahn_compare: --{what} wants ROLE=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def load_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def pick_agent(index: dict, agent: str | None) -> tuple[str | None, dict, str | None]:
    """Return (agent description, cases, error).

    Without an explicit agent all agents are merged: kosoku names a case's
    agent after the peer's Server header, or after the peer's address when
    the connection failed before the handshake (a crashed server), so one run
    can yield several agents.
    """
    if not index:
        return None, {}, "index.json holds no agent (no case ran)"
    if agent is not None:
        if agent not in index:
            return None, {}, f"agent {agent!r} not in index.json (has {sorted(index)})"
        return f"agent {agent!r}", index[agent], None
    merged: dict = {}
    for name, cases in index.items():
        for case_id, entry in cases.items():
            if case_id in merged:
                return None, {}, f"case {case_id} reported for several agents {sorted(index)}"
            merged[case_id] = entry
    label = "agent" if len(index) == 1 else "agents"
    return f"{label} " + ", ".join(repr(n) for n in sorted(index)), merged, None


def shorten(value, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def case_details(
    report_dir: str, entry: dict, behavior_differs: bool, close_differs: bool
) -> str:
    rel = entry.get("reportfile")
    path = os.path.join(report_dir, rel) if rel else None
    detail = None
    if path and os.path.exists(path):
        try:
            detail = load_json(path)
        except (OSError, ValueError):
            detail = None
    shown = path
    if path and not os.path.relpath(path).startswith(".."):
        shown = os.path.relpath(path)
    src = detail or entry
    parts = [f"report {shown}" if path else "report file unknown"]
    parts.append(f"remoteCloseCode={src.get('remoteCloseCode')}")
    if detail and detail.get("remoteCloseReason"):
        parts.append(f"remoteCloseReason={detail['remoteCloseReason']!r}")
    if detail:
        parts.append(f"localCloseCode={detail.get('localCloseCode')}")
        parts.append(f"wasClean={detail.get('wasClean')}")
    parts.append(f"duration={src.get('duration')}ms")
    text = "; ".join(parts)
    if detail:
        if behavior_differs:
            result = str(detail.get("result") or "")
            if DEFAULT_TIMEOUT_TEXT in result:
                result += " [kosoku default text: judge by close code/duration]"
            if result != GENERIC_MATCH_TEXT:
                text += f"\n      result: {result}"
            want = (detail.get("expected") or {}).get("OK")
            if want is not None:
                text += (
                    f"\n      received: {shorten(detail.get('received'))}"
                    f"\n      OK needs: {shorten(want)}"
                )
        if close_differs:
            text += f"\n      close:  {detail.get('resultClose') or ''}"
            if detail.get("wasNotCleanReason"):
                text += f" (not clean: {detail['wasNotCleanReason']})"
    return text


# Roles compared with another role's expectation: the axum echo app is a server like
# `wsx serve --echo` and must pass the same cases.
EXPECTATION = {"axum": "server"}


def compare_role(
    role: str,
    args: argparse.Namespace,
    role_cases: dict[str, list[str]],
    wall: str | None,
    error: str | None,
    agent: str | None,
) -> bool:
    report_dir = os.path.join(args.reports_dir, role + "s")
    index_path = os.path.join(report_dir, "index.json")
    expected_path = os.path.join(args.conformance_dir, f"expected-{EXPECTATION.get(role, role)}.json")
    wall_text = f"{float(wall):.1f}s" if wall else "n/a"
    print(f"== autobahn {role} ==")

    try:
        expected = load_json(expected_path)
    except (OSError, ValueError) as exc:
        print(f"{role}: FAILED: cannot read expectation {expected_path}: {exc}")
        print(f"{role}: wall time {wall_text}")
        return False
    globs = role_cases.get(role) or args.cases
    if globs:
        expected = {
            c: v
            for c, v in expected.items()
            if any(fnmatch.fnmatchcase(c, g) for g in globs)
        }

    got: dict = {}
    problems: list[str] = []
    if error:
        problems.append(error)
    if os.path.exists(index_path):
        try:
            agent_name, got, err = pick_agent(load_json(index_path), agent)
        except (OSError, ValueError) as exc:
            agent_name, err = None, f"cannot read {index_path}: {exc}"
        if err:
            problems.append(err)
        else:
            print(f"{role}: {agent_name}, report {index_path}")
    else:
        problems.append(f"no report: {index_path} missing")

    counts = Counter(v.get("behavior") for v in got.values())
    other = sum(n for b, n in counts.items() if b not in BEHAVIORS)
    close_counts = Counter(v.get("behaviorClose") for v in got.values())
    print(
        f"{role}: {len(got)} cases: "
        + ", ".join(f"{b} {counts.get(b, 0)}" for b in BEHAVIORS)
        + f", other {other}"
    )
    print(
        f"{role}: behaviorClose: "
        + ", ".join(f"{b} {n}" for b, n in sorted(close_counts.items()))
    )

    mismatches = []
    for case_id in sorted(set(expected) | set(got), key=sort_key):
        exp = expected.get(case_id)
        entry = got.get(case_id)
        exp_pair = (exp["behavior"], exp["behaviorClose"]) if exp else None
        got_pair = (entry.get("behavior"), entry.get("behaviorClose")) if entry else None
        if exp_pair != got_pair:
            mismatches.append((case_id, exp_pair, got_pair, entry))

    if mismatches and not got:
        print(f"{role}: no case result at all ({len(expected)} expected cases missing)")
    elif mismatches:
        limit = args.max_diffs if args.max_diffs > 0 else len(mismatches)
        print(f"{role}: {len(mismatches)} case(s) differ from {expected_path}:")
        for case_id, exp_pair, got_pair, entry in mismatches[:limit]:
            fmt = lambda p: "/".join(p) if p else "(missing)"  # noqa: E731
            if exp_pair is None:
                fmt_exp = "(not expected: extra case)"
            else:
                fmt_exp = fmt(exp_pair)
            print(f"  {case_id}: expected {fmt_exp}, got {fmt(got_pair)}")
            if entry:
                b_diff = exp_pair is None or exp_pair[0] != got_pair[0]
                c_diff = exp_pair is None or exp_pair[1] != got_pair[1]
                print(f"      {case_details(report_dir, entry, b_diff, c_diff)}")
        if len(mismatches) > limit:
            rest = Counter(m[0].split(".")[0] + ".*" for m in mismatches[limit:])
            print(
                f"  ... and {len(mismatches) - limit} more ("
                + ", ".join(f"{g} {n}" for g, n in sorted(rest.items(), key=lambda kv: sort_key(kv[0][:-2])))
                + "); --max-diffs 0 / WSX_AUTOBAHN_MAX_DIFFS=0 shows all"
            )
    for p in problems:
        print(f"{role}: ERROR: {p}")
    ok = not mismatches and not problems
    print(f"{role}: {'PASSED' if ok else 'FAILED'} (wall time {wall_text})")
    return ok


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, ".."))
    ap = argparse.ArgumentParser(description="compare kosoku reports with expectations")
    ap.add_argument("roles", nargs="+", choices=("server", "client", "axum"))
    ap.add_argument("--reports-dir", default=os.path.join(root, "reports"))
    ap.add_argument("--conformance-dir", default=os.path.join(root, "conformance"))
    ap.add_argument("--wall", action="append", metavar="ROLE=SECONDS")
    ap.add_argument(
        "--error", action="append", metavar="ROLE=MESSAGE", help="fail ROLE with MESSAGE"
    )
    ap.add_argument("--agent", action="append", metavar="ROLE=NAME")
    ap.add_argument(
        "--cases",
        action="append",
        metavar="GLOB",
        help="only compare expected cases matching these globs (as passed to kosoku -i)",
    )
    ap.add_argument(
        "--role-cases",
        action="append",
        metavar="ROLE=GLOB",
        help="only compare ROLE's expected cases matching these globs (instead of --cases)",
    )
    ap.add_argument(
        "--max-diffs", type=int, default=100, help="mismatches printed per role (0 = all)"
    )
    args = ap.parse_args()
    walls = parse_kv(args.wall, "wall")
    errors = parse_kv(args.error, "error")
    agents = parse_kv(args.agent, "agent")
    role_cases: dict[str, list[str]] = {}
    for item in args.role_cases or []:
        role, sep, glob = item.partition("=")
        if not sep or not glob:
            ap.error(f"--role-cases {item!r}: expected ROLE=GLOB")
        role_cases.setdefault(role, []).append(glob)

    passed = failed = 0
    for role in dict.fromkeys(args.roles):
        if compare_role(role, args, role_cases, walls.get(role), errors.get(role), agents.get(role)):
            passed += 1
        else:
            failed += 1
    print(f"autobahn: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
