#!/usr/bin/env python3
"""prepared_asyncpg.py: asyncpg from many connections and processes, checking every result.

asyncpg prepares every statement it runs, under names such as __asyncpg_stmt_1__ from a counter
of its own per process, and keeps them in a per-connection cache (statement_cache_size, default
100). asyncpg's documentation tells pgbouncer users in transaction mode to turn that cache off;
here it stays on, because pgkeel must keep each client's statements apart whatever the pool mode.
Several processes, each with several connections, prepare their statements in different orders,
so one name means a different statement (other parameter and result types) in each process. A
pooler that lets them meet on a shared server connection answers with a wrong result, a type
error, or "prepared statement ... does not exist / already exists"; each is reported.

    command -p python3 tests/python/prepared_asyncpg.py DSN [--processes 4] [--connections 4] [--rounds 30]
    e.g. DSN = postgresql://app:app-pass@127.0.0.1:6432/app

(`command -p`: the system's python3, with Debian's python3-asyncpg.) Prints one line per wrong
result or error (the first 40), then a summary; exits 0 only if there were none. Its table has a
random suffix and is dropped at the end.
"""
import argparse
import asyncio
import decimal
import hashlib
import multiprocessing
import random
import secrets
import sys

import asyncpg

MAX_REPORTED = 40


class Wrong(Exception):
    """A result that differs from the expected one."""


class Rollback(Exception):
    """Raised inside `async with conn.transaction()` to roll it back."""


def expect_eq(expected, actual, what):
    if expected != actual:
        raise Wrong(f"{what}: expected {expected!r} but got {actual!r}")


# Each kind: (name, sql, check). check(conn_or_stmt_runner, p, c, r) runs it once and checks it;
# p, c and r are the process, connection and round numbers.
async def check_add(run, p, c, r):
    expect_eq(p * 1000 + c * 100 + r, await run("fetchval", p * 1000, c * 100 + r), "add")


async def check_concat(run, p, c, r):
    expect_eq(f"P{p}C{c}/{r}", await run("fetchval", f"p{p}c{c}", r), "concat")


async def check_two_columns(run, p, c, r):
    row = await run("fetchrow", 10_000_000_000 + p, f"r{r}")
    expect_eq((3 * (10_000_000_000 + p), f"r{r}"), (row["big"], row["t"]), "two-columns")


async def check_series(run, p, c, r):
    n = 1 + (p * 13 + c * 7 + r) % 50
    rows = await run("fetch", n)
    expect_eq(list(range(1, n + 1)), [row[0] for row in rows], "series")


async def check_numeric(run, p, c, r):
    x = decimal.Decimal(p * 10000 + c * 100 + r).scaleb(-2)
    got = await run("fetchval", x)
    expect_eq(x / 4, got, "numeric")


async def check_md5(run, p, c, r):
    text = f"process {p} connection {c} round {r}"
    expect_eq(hashlib.md5(text.encode()).hexdigest(), await run("fetchval", text), "md5")


async def check_array(run, p, c, r):
    ints = [i * r for i in range(1 + (p + c) % 5)]
    row = await run("fetchrow", ints, [f"a{p}", f"b{c}"])
    expect_eq((len(ints), [f"a{p}", f"b{c}"]), (row[0], list(row[1])), "array")


async def check_bool_null(run, p, c, r):
    is_null = (p + c + r) % 2 == 0
    row = await run("fetchrow", None if is_null else r, None if is_null else f"x{c}")
    expect_eq((is_null, "none" if is_null else f"x{c}"), (row[0], row[1]), "bool-null")


KINDS = [
    ("add", "SELECT $1::int + $2::int", check_add),
    ("concat", "SELECT upper($1::text) || '/' || $2::int", check_concat),
    ("two-columns", "SELECT $1::bigint * 3 AS big, $2::text AS t", check_two_columns),
    ("series", "SELECT g FROM generate_series(1, $1::int) g ORDER BY g", check_series),
    ("numeric", "SELECT $1::numeric(14,2) / 4", check_numeric),
    ("md5", "SELECT md5($1::text)", check_md5),
    ("array", "SELECT array_length($1::int[], 1), $2::text[]", check_array),
    ("bool-null", "SELECT $1::int IS NULL, coalesce($2::text, 'none')", check_bool_null),
]


class Tally:
    def __init__(self):
        self.executions = 0
        self.transactions = 0
        self.wrong = 0
        self.errors = 0
        self.lines = []

    def report(self, line):
        if len(self.lines) < MAX_REPORTED:
            self.lines.append(" ".join(line.split())[:300])

    def failed(self, where, exc):
        if isinstance(exc, Wrong):
            self.wrong += 1
            self.report(f"WRONG {where}: {exc}")
        else:
            self.errors += 1
            state = getattr(exc, "sqlstate", None)
            self.report(f"ERROR {where}{f' [{state}]' if state else ''}: {type(exc).__name__}: {exc}")


def runner(conn, sql, stmt=None):
    """Runs `sql` through asyncpg's statement cache, or through an explicitly prepared statement."""

    async def run(method, *args):
        if stmt is not None:
            return await getattr(stmt, method)(*args)
        return await getattr(conn, method)(sql, *args)

    return run


async def write_round(conn, table, p, c, r, tally):
    row_id = p * 10_000_000 + c * 100_000 + r
    ghost = -row_id - 1
    async with conn.transaction():
        await conn.execute(f"INSERT INTO {table} (id, v) VALUES ($1, $2)", row_id, f"v{r}")
        status = await conn.execute(f"UPDATE {table} SET v = v || $1 WHERE id = $2", f"+{c}", row_id)
        expect_eq("UPDATE 1", status, "update status")
    try:
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} (id, v) VALUES ($1, $2)", ghost, "ghost")
            raise Rollback()
    except Rollback:
        pass
    expect_eq(f"v{r}+{c}", await conn.fetchval(f"SELECT v FROM {table} WHERE id = $1", row_id), "read back")
    expect_eq(None, await conn.fetchval(f"SELECT v FROM {table} WHERE id = $1", ghost), "rolled back row")
    tally.executions += 6
    tally.transactions += 2


async def run_connection(dsn, table, p, c, rounds, tally):
    kinds = list(KINDS)
    random.Random(p * 7919 + c * 31 + 5).shuffle(kinds)  # other names for other statements
    try:
        conn = await asyncpg.connect(dsn, timeout=20, command_timeout=60)
    except Exception as exc:  # noqa: BLE001 -- every failure is reported, none may pass
        tally.failed(f"process {p} connection {c} connect", exc)
        return
    try:
        # Half of the kinds also as statements prepared once and kept for the whole run.
        held = {name: await conn.prepare(sql) for name, sql, _ in kinds[: len(kinds) // 2]}
        for r in range(rounds):
            for i in range(len(kinds)):
                name, sql, check = kinds[(i + r) % len(kinds)]
                run = runner(conn, sql, held.get(name) if r % 2 else None)
                try:
                    await check(run, p, c, r)
                    tally.executions += 1
                except Exception as exc:  # noqa: BLE001
                    tally.failed(f"process {p} connection {c} round {r} {name}", exc)
            try:
                await write_round(conn, table, p, c, r, tally)
            except Exception as exc:  # noqa: BLE001
                tally.failed(f"process {p} connection {c} round {r} write", exc)
    finally:
        await conn.close()


def run_process(args):
    dsn, table, p, connections, rounds = args
    tally = Tally()

    async def main():
        await asyncio.gather(*(run_connection(dsn, table, p, c, rounds, tally) for c in range(connections)))

    asyncio.run(main())
    return tally.executions, tally.transactions, tally.wrong, tally.errors, tally.lines


async def setup(dsn, table, create):
    conn = await asyncpg.connect(dsn, timeout=20)
    try:
        if create:
            await conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, v text NOT NULL)")
            return None
        count = await conn.fetchval(f"SELECT count(*) FROM {table}")
        await conn.execute(f"DROP TABLE {table}")
        return count
    finally:
        await conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--connections", type=int, default=4, help="per process")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    table = "prepared_asyncpg_" + secrets.token_hex(4)
    asyncio.run(setup(args.dsn, table, True))
    # fork: each process starts with asyncpg's statement counter at the same value.
    with multiprocessing.get_context("fork").Pool(args.processes) as pool:
        results = pool.map(
            run_process, [(args.dsn, table, p, args.connections, args.rounds) for p in range(args.processes)]
        )
    executions = sum(r[0] for r in results)
    transactions = sum(r[1] for r in results)
    wrong = sum(r[2] for r in results)
    errors = sum(r[3] for r in results)
    for line in [line for r in results for line in r[4]][:MAX_REPORTED]:
        print(line)
    rows = asyncio.run(setup(args.dsn, table, False))
    expected_rows = args.processes * args.connections * args.rounds
    if rows != expected_rows:
        wrong += 1
        print(f"WRONG table: expected {expected_rows} rows, found {rows}")
    print(
        f"prepared_asyncpg: {args.processes} processes x {args.connections} connections, {args.rounds} rounds, "
        f"{executions} executions, {transactions} transactions, {wrong} wrong results, {errors} errors"
    )
    return 0 if wrong == 0 and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
