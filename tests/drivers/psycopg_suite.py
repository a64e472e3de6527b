#!/usr/bin/env python3
"""psycopg_suite.py: psycopg 3 (Debian's python3-psycopg) through pgkeel, every result checked.

psycopg prepares a query on the server once it has run `prepare_threshold` times on a connection
(default 5; 0: from the first run; None: never), under names _pg3_0, _pg3_1, ... counted per
connection, so two connections mean different statements by the same name. The prepared cases
run with each of the three settings; COPY, pipelines and a 100 MB bytea in both directions (a
binary parameter with a binary result, and hex text both ways) run once.

    PGHOST=127.0.0.1 PGPORT=6432 PGUSER=app PGPASSWORD=app-pass PGDATABASE=app PGSSLMODE=require \
      command -p python3 tests/drivers/psycopg_suite.py [--only NAME]

(`command -p`: the system's python3, with Debian's python3-psycopg.) Output and exit status as in
common.py: one PASS/FAIL line per case.
"""
import hashlib
import os
import secrets
import threading

import psycopg

from common import Runner, conninfo, expect, expect_eq

SETTINGS = [("prepare_threshold=5", 5), ("prepare_threshold=0", 0), ("prepare_threshold=None", None)]
BIG = int(os.environ.get("DRIVERS_BYTEA_MB", "100")) * 1024 * 1024
TABLE = f"drivers_psycopg_{secrets.token_hex(4)}"


def connect(threshold=5, **kw):
    conn = psycopg.connect(conninfo(), autocommit=True, **kw)
    conn.prepare_threshold = threshold
    return conn


def repeat_select(threshold):
    # Past the threshold psycopg sends Bind/Execute for _pg3_N only, on whichever server
    # connection runs it.
    with connect(threshold) as conn:
        for i in range(12):
            row = conn.execute("SELECT %s::int + 1, %s::text || 'x'", (i, f"r{i}")).fetchone()
            expect_eq((i + 1, f"r{i}x"), row, f"run {i + 1}")
        for i in range(8):
            row = conn.execute("SELECT %s::bigint * 3", (i,)).fetchone()
            expect_eq((3 * i,), row, f"second query, run {i + 1}")


def repeat_in_transactions(threshold):
    with connect(threshold) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int, v text)")
        base = secrets.randbelow(1_000_000) * 100
        for i in range(8):
            with conn.transaction():
                conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (base + i, f"v{i}"))
                got = conn.execute(f"SELECT v FROM {TABLE} WHERE id = %s", (base + i,)).fetchone()
                expect_eq((f"v{i}",), got, f"read own write {i + 1}")
        expect_eq((8,), conn.execute(f"SELECT count(*)::int FROM {TABLE} WHERE id >= %s AND id < %s",
                                     (base, base + 100)).fetchone(), "rows committed")


def error_then_repeat(threshold):
    # An error inside a prepared statement's run must leave the statement usable.
    with connect(threshold) as conn:
        for i in range(8):
            try:
                conn.execute("SELECT 10 / %s::int", (0 if i == 3 else 1,)).fetchone()
                expect(i != 3, "division by zero raised no error")
            except psycopg.errors.DivisionByZero:
                expect(i == 3, f"division by zero on run {i + 1}")
        expect_eq((5,), conn.execute("SELECT 10 / %s::int", (2,)).fetchone(), "after the error")


def two_connections_same_names(threshold):
    # Both connections' first prepared statement is _pg3_0, meaning different SQL.
    with connect(threshold) as a, connect(threshold) as b:
        for i in range(10):
            expect_eq((i * 7,), a.execute("SELECT %s::int * 7", (i,)).fetchone(), f"a run {i + 1}")
            expect_eq((f"b{i}", True), b.execute("SELECT 'b' || %s::text, true", (i,)).fetchone(),
                      f"b run {i + 1}")


def rollback_after_prepare(threshold):
    # Statements prepared inside a transaction that ends in ROLLBACK stay prepared (Parse is not
    # transactional); psycopg goes on using them in the next transactions.
    with psycopg.connect(conninfo()) as conn:  # not autocommit: psycopg sends BEGIN itself
        conn.prepare_threshold = threshold
        for i in range(7):
            expect_eq((i + 7,), conn.execute("SELECT %s::int + 7", (i,)).fetchone(), f"run {i + 1}")
        try:
            conn.execute("SELECT 1 / %s::int", (0,))
            raise AssertionError("division by zero raised no error")
        except psycopg.errors.DivisionByZero:
            pass
        conn.rollback()
        for i in range(7):
            expect_eq((i + 7,), conn.execute("SELECT %s::int + 7", (i,)).fetchone(),
                      f"after the rollback, run {i + 1}")
            conn.commit()


def concurrent_connections(threshold):
    # Six connections at once, each its own query (all named _pg3_0 by psycopg), 150 runs each:
    # in transaction pooling they keep meeting on the same server connections.
    errors = []

    def load(k):
        try:
            with connect(threshold) as conn:
                for n in range(150):
                    expect_eq((n * k,), conn.execute(f"SELECT %s::int * {k}", (n,)).fetchone(), f"connection {k} run {n + 1}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"connection {k}: {getattr(exc, 'sqlstate', None) or ''} {exc}")

    threads = [threading.Thread(target=load, args=(k,)) for k in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expect(not errors, f"{len(errors)} of 6 connections failed, first: {errors[:1]}")


def pipeline(threshold):
    with connect(threshold) as conn:
        for round_ in range(3):
            with conn.pipeline():
                curs = [conn.execute("SELECT %s::int, %s::text", (i, f"p{round_}")) for i in range(10)]
                with conn.transaction():
                    tx = conn.execute("SELECT %s::int * 2", (round_,))
            for i, cur in enumerate(curs):
                expect_eq((i, f"p{round_}"), cur.fetchone(), f"pipeline {round_} result {i}")
            expect_eq((2 * round_,), tx.fetchone(), f"pipeline {round_} transaction")


def executemany(threshold):
    with connect(threshold) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int, v text)")
        base = 10_000_000 + secrets.randbelow(1_000_000) * 100
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {TABLE} VALUES (%s, %s)", [(base + i, f"m{i}") for i in range(50)])
        got = conn.execute(f"SELECT count(*)::int, min(v), max(v) FROM {TABLE} WHERE id >= %s AND id < %s",
                           (base, base + 100)).fetchone()
        expect_eq((50, "m0", "m9"), got, "executemany rows")


def copy_in_out():
    with connect() as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE}_copy (id int, v text)")
        conn.execute(f"TRUNCATE {TABLE}_copy")
        with conn.cursor() as cur:
            with cur.copy(f"COPY {TABLE}_copy (id, v) FROM STDIN") as copy:
                for i in range(20_000):
                    copy.write_row((i, f"row {i}\twith tab"))
            expect_eq((20_000, 199_990_000), conn.execute(
                f"SELECT count(*)::int, sum(id)::int FROM {TABLE}_copy").fetchone(), "rows copied in")
            out = bytearray()
            with cur.copy(f"COPY (SELECT id, v FROM {TABLE}_copy ORDER BY id) TO STDOUT") as copy:
                for data in copy:
                    out += data
            lines = bytes(out).decode().splitlines()
            expect_eq(20_000, len(lines), "lines copied out")
            expect_eq("19999\trow 19999\\twith tab", lines[-1], "last line copied out")
        # The connection is usable after both.
        expect_eq((1,), conn.execute("SELECT 1").fetchone(), "after COPY")


def bytea_binary():
    data = secrets.token_bytes(BIG)
    with connect() as conn:
        # %b: the parameter goes as binary; binary=True: the result comes back binary.
        row = conn.execute("SELECT md5(v), length(v), v FROM (SELECT %b::bytea AS v) s", (data,),
                           binary=True).fetchone()
    expect_eq(hashlib.md5(data).hexdigest(), row[0], "md5 of what the server received")
    expect_eq(len(data), row[1], "length the server received")
    expect(bytes(row[2]) == data, f"the {len(row[2])} bytes returned differ from those sent")


def bytea_hex_text():
    data = secrets.token_bytes(BIG)
    with connect() as conn:
        # %t: the parameter goes as text (hex, twice the size); the result comes back as hex text.
        row = conn.execute("SELECT md5(v), length(v), v FROM (SELECT %t::bytea AS v) s", (data,)).fetchone()
    expect_eq(hashlib.md5(data).hexdigest(), row[0], "md5 of what the server received")
    expect_eq(len(data), row[1], "length the server received")
    expect(bytes(row[2]) == data, f"the {len(row[2])} bytes returned differ from those sent")


def main():
    r = Runner("psycopg")
    for label, threshold in SETTINGS:
        r.case(f"{label} repeat_select", lambda t=threshold: repeat_select(t))
        r.case(f"{label} repeat_in_transactions", lambda t=threshold: repeat_in_transactions(t))
        r.case(f"{label} error_then_repeat", lambda t=threshold: error_then_repeat(t))
        r.case(f"{label} two_connections_same_names", lambda t=threshold: two_connections_same_names(t))
        r.case(f"{label} concurrent_connections", lambda t=threshold: concurrent_connections(t))
        r.case(f"{label} pipeline", lambda t=threshold: pipeline(t))
        r.case(f"{label} executemany", lambda t=threshold: executemany(t))
    # Last of the prepared cases: on pgkeel as of 2026-12-06 a statement prepared inside a
    # transaction that rolls back leaves the pool believing a server statement exists that does
    # not, and later cases (of any client) on that server connection would fail for it.
    for label, threshold in SETTINGS:
        r.case(f"{label} rollback_after_prepare", lambda t=threshold: rollback_after_prepare(t))
    r.case("copy_in_out", copy_in_out)
    r.case("bytea_100mb_binary", bytea_binary, timeout=120)
    r.case("bytea_100mb_hex_text", bytea_hex_text, timeout=120)
    try:
        with connect() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_copy")
    except psycopg.Error as exc:
        print(f"note: cleanup failed: {exc}", flush=True)
    r.finish()


if __name__ == "__main__":
    main()
