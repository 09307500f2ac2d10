"""Run CPython's own sqlite3 tests (the `test.test_sqlite3` package of this Python) against
octodb, by putting `octodb` in place of `sqlite3` before the suite is imported. The suite is
not edited. Failures are sorted by reason: a SQLite build option or version the suite expects,
a difference octodb keeps by design, or a bug.

    python cpython_suite.py                 # run, print the figures and the failures
    python cpython_suite.py --min-rate 90   # ... and exit 1 below 90% (what scripts/test does)
    python cpython_suite.py --record FILE   # ... and write the figures and failures to FILE
"""

import argparse
import io
import os
import sys
import tempfile
import time
import unittest

import octodb
import octodb._octodb

# The substitution: everything below imports octodb when it asks for sqlite3.
sys.modules["sqlite3"] = octodb
sys.modules["_sqlite3"] = octodb._octodb

BUILD_OPTION = "build option"
BY_DESIGN = "by design"
BUG = "bug"

# Why a test fails, for those that fail for a known reason. Keys are test ids or the id's
# start (a class); the first word of the value is the category.
KNOWN = {}


def reason_for(test_id):
    for key, value in KNOWN.items():
        if test_id == key or test_id.startswith(key + "."):
            return value
    return (BUG, "not analysed yet")


class Collect(unittest.TextTestResult):
    """Records each test's outcome once, whatever its subtests did."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcome = {}
        self.detail = {}

    def _set(self, test, status, err=None):
        tid = test.id()
        rank = {"pass": 0, "skip": 1, "fail": 2, "error": 3}
        if rank[status] >= rank.get(self.outcome.get(tid, "pass"), 0):
            self.outcome[tid] = status
            if err is not None:
                self.detail[tid] = self._exc_info_to_string(err, test).strip().splitlines()[-1]

    def addSuccess(self, test):
        super().addSuccess(test)
        self.outcome.setdefault(test.id(), "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "fail", err)

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "error", err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, "skip")
        self.detail[test.id()] = "skipped: " + reason

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.outcome.setdefault(test.id(), "pass")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "fail")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._set(test, "fail" if failed else "error", err)
        else:
            self.outcome.setdefault(test.id(), "pass")


def run_suite():
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromName("test.test_sqlite3")
    stream = io.StringIO()
    runner = unittest.TextTestRunner(stream=stream, resultclass=Collect, verbosity=0)
    with tempfile.TemporaryDirectory(prefix="octodb-cpython-suite-") as where:
        here = os.getcwd()
        os.chdir(where)
        try:
            started = time.monotonic()
            result = runner.run(suite)
            elapsed = time.monotonic() - started
        finally:
            os.chdir(here)
    return result, elapsed


def summarize(result, elapsed):
    outcome = result.outcome
    total = len(outcome)
    skipped = sorted(t for t, s in outcome.items() if s == "skip")
    failed = sorted(t for t, s in outcome.items() if s in ("fail", "error"))
    passed = total - len(skipped) - len(failed)
    by_cat = {BUILD_OPTION: [], BY_DESIGN: [], BUG: []}
    for tid in failed:
        cat, why = reason_for(tid)
        by_cat[cat].append((tid, why, result.detail.get(tid, "")))
    considered = total - len(skipped) - len(by_cat[BUILD_OPTION])
    rate = 100.0 * passed / considered if considered else 0.0
    return {
        "python": sys.version.split()[0],
        "sqlite": octodb.sqlite_version,
        "total": total,
        "passed": passed,
        "skipped": skipped,
        "failed": failed,
        "by_cat": by_cat,
        "considered": considered,
        "rate": rate,
        "elapsed": elapsed,
        "detail": result.detail,
    }


def report(s):
    lines = [
        "# CPython's sqlite3 test suite against octodb",
        "",
        "Produced by `crates/octodb-py/tests/cpython_suite.py --record` (part of `scripts/test`,",
        "which fails if the pass rate drops below 90%). The suite is the `test.test_sqlite3`",
        "package of the Python that runs it, unedited; the script only puts `octodb` in place of",
        "`sqlite3` in `sys.modules` before importing it.",
        "",
        f"- Python {s['python']}, SQLite {s['sqlite']} (bundled with octodb)",
        f"- tests: {s['total']}; passed: {s['passed']}; failed: {len(s['failed'])}; "
        f"skipped by the suite itself: {len(s['skipped'])}",
        f"- failing because of a SQLite build option or version: {len(s['by_cat'][BUILD_OPTION])}",
        f"- **pass rate over the tests that do not depend on a build option: "
        f"{s['passed']}/{s['considered']} = {s['rate']:.1f}%**",
        "",
    ]
    for cat, title in (
        (BUILD_OPTION, "Failing because of a SQLite build option or version"),
        (BY_DESIGN, "Different by design"),
        (BUG, "Bugs (not yet fixed)"),
    ):
        items = s["by_cat"][cat]
        lines.append(f"## {title} ({len(items)})")
        lines.append("")
        if not items:
            lines.append("None.")
        for tid, why, detail in items:
            lines.append(f"- `{tid}`: {why}" + (f" (`{detail}`)" if detail and cat == BUG else ""))
        lines.append("")
    lines.append(f"## Skipped by the suite itself ({len(s['skipped'])})")
    lines.append("")
    for tid in s["skipped"]:
        lines.append(f"- `{tid}`: {s['detail'].get(tid, '')}")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-rate", type=float, default=None)
    ap.add_argument("--record", metavar="FILE")
    args = ap.parse_args()
    result, elapsed = run_suite()
    s = summarize(result, elapsed)
    text = report(s)
    if args.record:
        with open(args.record, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    print(f"(ran in {s['elapsed']:.1f} s)")
    if args.min_rate is not None and s["rate"] < args.min_rate:
        print(f"FAIL: pass rate {s['rate']:.1f}% is below {args.min_rate}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
