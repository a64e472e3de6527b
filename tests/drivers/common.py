"""common.py: what the Python driver suites share: where to connect, and PASS/FAIL reporting.

Every suite reads the standard libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and
PGSSLMODE (disable or require; require does not check the certificate, as libpq's), prints one
line per case, `PASS name` or `FAIL name: reason`, then `summary: N passed, M failed`, and exits 1
if any case failed. A case that fails does not stop the others: each opens its own connections.
`--only SUBSTRING` (repeatable) runs the cases whose name contains one of them.
"""
import argparse
import os
import signal
import sys
import time
import traceback


def settings():
    return {
        "host": os.environ.get("PGHOST", "127.0.0.1"),
        "port": int(os.environ.get("PGPORT", "5432")),
        "user": os.environ.get("PGUSER", "app"),
        "password": os.environ.get("PGPASSWORD", ""),
        "dbname": os.environ.get("PGDATABASE", "app"),
        "sslmode": os.environ.get("PGSSLMODE", "disable"),
    }


def conninfo(port=None, **extra):
    s = settings()
    if port is not None:
        s["port"] = port
    s.update(extra)
    return " ".join(f"{k}='{v}'" for k, v in s.items()) + " connect_timeout=10"


class CaseTimeout(Exception):
    """A case ran past its deadline (raised from SIGALRM, so a hang ends as a FAIL)."""


def _alarm(signum, frame):
    raise CaseTimeout("no answer within the case's deadline")


class Runner:
    """Runs cases (callables that raise on failure) and reports each on its own line."""

    def __init__(self, suite):
        parser = argparse.ArgumentParser(description=suite)
        parser.add_argument("--only", action="append", default=[])
        self.only = parser.parse_args().only
        self.suite = suite
        self.passed = 0
        self.failed = 0
        self.started = time.monotonic()
        signal.signal(signal.SIGALRM, _alarm)

    def case(self, name, fn, timeout=60):
        if self.only and not any(o in name for o in self.only):
            return
        started = time.monotonic()
        signal.alarm(timeout)
        try:
            fn()
            signal.alarm(0)
            self.passed += 1
            print(f"PASS {name} ({time.monotonic() - started:.1f}s)", flush=True)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, none stops the run
            signal.alarm(0)
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.failed += 1
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " | ")
            sqlstate = getattr(exc, "sqlstate", None)
            if sqlstate:
                reason = f"{sqlstate} {reason}"
            print(f"FAIL {name}: {reason[:600]}", flush=True)
            if os.environ.get("DRIVERS_TRACE"):
                traceback.print_exc()

    def finish(self):
        print(f"summary: {self.suite}: {self.passed} passed, {self.failed} failed "
              f"in {time.monotonic() - self.started:.1f}s", flush=True)
        sys.exit(1 if self.failed else 0)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_eq(expected, actual, what):
    if expected != actual:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")
