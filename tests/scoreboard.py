"""The fault-injection suite's scoreboard (`make test-faults`): what was tried, what held.

Tests in `tests/test_faults.py` add to `SCOREBOARD`; `tests/conftest.py` prints it at the end
of the session. Each line is "what happened / out of how many", and the lines marked
`must be 0` fail the suite's last test when they are not.
"""

from __future__ import annotations

from collections import Counter

SCOREBOARD: Counter = Counter()

LINES = (
    ("faults injected / survived", "faults injected", "faults survived"),
    ("runs resumed / resumed exactly", "runs resumed", "runs resumed exactly"),
    ("aimed kills that missed (the run ended first, exit 0)",
     "aimed kills that missed (run ended first, exit 0)", None),
    ("artifacts lost (must be 0)", "artifacts lost", None),
    ("torn artifacts visible to a reader (must be 0)", "torn artifacts", None),
    ("stale or damaged states refused", "stale states refused", None),
    ("untrusted payloads tried / blocked", "payloads tried", "payloads blocked"),
    ("bad inputs tried / handled with a one-line message", "bad inputs tried",
     "bad inputs handled"),
)


def format_scoreboard() -> list[str]:
    """The scoreboard as lines of text, one per `LINES` entry."""
    lines = ["Fault-injection scoreboard"]
    for label, first, second in LINES:
        value = f"{SCOREBOARD[first]}" + (f" / {SCOREBOARD[second]}" if second else "")
        lines.append(f"  {label:<52} {value}")
    kills = [f"{key.removeprefix('killed in ')} {count}" for key, count in SCOREBOARD.items()
             if key.startswith("killed in ")]
    if kills:
        lines.append(f"  {'SIGKILLs by the part of the run they hit':<52} {', '.join(kills)}")
    return lines
