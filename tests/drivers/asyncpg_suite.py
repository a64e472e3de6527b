#!/usr/bin/env python3
"""asyncpg_suite.py: asyncpg (Debian's python3-asyncpg) through pgkeel, every result checked.

asyncpg runs every query as a named prepared statement (__asyncpg_stmt_N__) and keeps them in a
per-connection cache (statement_cache_size, default 100); with statement_cache_size=0 it uses
the unnamed statement for queries, but conn.prepare() still makes a named one. The prepared
cases run with the cache on and off; COPY, LISTEN/NOTIFY and a cancel by timeout run once.
add_listener() sends its LISTEN through conn.fetch(), so by the extended protocol.

    PGHOST=127.0.0.1 PGPORT=6432 PGUSER=app PGPASSWORD=app-pass PGDATABASE=app PGSSLMODE=require \
      command -p python3 tests/drivers/asyncpg_suite.py [--only NAME]

Output and exit status as in common.py: one PASS/FAIL line per case.
"""
import asyncio
import io
import secrets

import asyncpg

from common import Runner, expect, expect_eq, settings

SETTINGS = [("statement_cache_size=100", 100), ("statement_cache_size=0", 0)]
TABLE = f"drivers_asyncpg_{secrets.token_hex(4)}"


async def connect(cache=100):
    s = settings()
    return await asyncpg.connect(host=s["host"], port=s["port"], user=s["user"], password=s["password"],
                                 database=s["dbname"], ssl=s["sslmode"], statement_cache_size=cache,
                                 timeout=10)


def run(coro_fn):
    return lambda: asyncio.run(coro_fn())


async def repeat_fetch(cache):
    conn = await connect(cache)
    try:
        for i in range(12):
            row = await conn.fetchrow("SELECT $1::int + 1 AS a, $2::text || 'x' AS b", i, f"r{i}")
            expect_eq((i + 1, f"r{i}x"), (row["a"], row["b"]), f"run {i + 1}")
        for i in range(8):
            expect_eq(3 * i, await conn.fetchval("SELECT $1::bigint * 3", i), f"second query, run {i + 1}")
    finally:
        await conn.close()


async def explicit_prepare(cache):
    conn = await connect(cache)
    try:
        double = await conn.prepare("SELECT $1::int * 2")
        concat = await conn.prepare("SELECT $1::text || '!' AS t, $2::numeric AS n")
        for i in range(10):
            expect_eq(2 * i, await double.fetchval(i), f"double run {i + 1}")
            row = await concat.fetchrow(f"c{i}", i)
            expect_eq((f"c{i}!", i), (row["t"], row["n"]), f"concat run {i + 1}")
    finally:
        await conn.close()


async def transactions(cache):
    conn = await connect(cache)
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int, v text)")
        base = secrets.randbelow(1_000_000) * 100
        for i in range(8):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, $2)", base + i, f"v{i}")
                expect_eq(f"v{i}", await conn.fetchval(f"SELECT v FROM {TABLE} WHERE id = $1", base + i),
                          f"read own write {i + 1}")
        expect_eq(8, await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE id >= $1 AND id < $2",
                                         base, base + 100), "rows committed")
    finally:
        await conn.close()


async def cursor_in_transaction(cache):
    conn = await connect(cache)
    try:
        total = 0
        count = 0
        async with conn.transaction():
            async for rec in conn.cursor("SELECT g FROM generate_series(1, $1::int) g", 2000, prefetch=128):
                total += rec["g"]
                count += 1
        expect_eq((2000, 2001000), (count, total), "rows through the cursor")
    finally:
        await conn.close()


async def executemany(cache):
    conn = await connect(cache)
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int, v text)")
        base = 10_000_000 + secrets.randbelow(1_000_000) * 100
        await conn.executemany(f"INSERT INTO {TABLE} VALUES ($1, $2)", [(base + i, f"m{i}") for i in range(50)])
        row = await conn.fetchrow(f"SELECT count(*) AS c FROM {TABLE} WHERE id >= $1 AND id < $2", base, base + 100)
        expect_eq(50, row["c"], "executemany rows")
    finally:
        await conn.close()


async def error_then_repeat(cache):
    conn = await connect(cache)
    try:
        for i in range(8):
            try:
                await conn.fetchval("SELECT 10 / $1::int", 0 if i == 3 else 1)
                expect(i != 3, "division by zero raised no error")
            except asyncpg.DivisionByZeroError:
                expect(i == 3, f"division by zero on run {i + 1}")
        expect_eq(5, await conn.fetchval("SELECT 10 / $1::int", 2), "after the error")
    finally:
        await conn.close()


async def rollback_after_prepare(cache):
    # Statements prepared inside a transaction that rolls back stay prepared (Parse is not
    # transactional); asyncpg's cache goes on using them in the next transactions.
    conn = await connect(cache)
    try:
        try:
            async with conn.transaction():
                for i in range(3):
                    expect_eq(i + 7, await conn.fetchval("SELECT $1::int + 7", i), f"run {i + 1}")
                await conn.fetchval("SELECT 1 / $1::int", 0)
            raise AssertionError("division by zero raised no error")
        except asyncpg.DivisionByZeroError:
            pass
        for i in range(5):
            async with conn.transaction():
                expect_eq(i + 7, await conn.fetchval("SELECT $1::int + 7", i), f"after the rollback, run {i + 1}")
    finally:
        await conn.close()


async def copy_in_out():
    conn = await connect()
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE}_copy (id int, v text)")
        await conn.execute(f"TRUNCATE {TABLE}_copy")
        await conn.copy_records_to_table(f"{TABLE}_copy", records=[(i, f"row {i}") for i in range(20_000)],
                                         columns=["id", "v"])
        row = await conn.fetchrow(f"SELECT count(*)::int AS c, sum(id)::int AS s FROM {TABLE}_copy")
        expect_eq((20_000, 199_990_000), (row["c"], row["s"]), "rows copied in")
        out = io.BytesIO()
        await conn.copy_from_query(f"SELECT id, v FROM {TABLE}_copy ORDER BY id", output=out)
        lines = out.getvalue().decode().splitlines()
        expect_eq(20_000, len(lines), "lines copied out")
        expect_eq("19999\trow 19999", lines[-1], "last line copied out")
        expect_eq(1, await conn.fetchval("SELECT 1"), "after COPY")
    finally:
        await conn.close()


async def listen_notify():
    listener = await connect()
    notifier = await connect()
    try:
        got = asyncio.get_running_loop().create_future()
        channel = f"drivers_{secrets.token_hex(4)}"
        await listener.add_listener(channel, lambda c, pid, ch, payload: got.done() or got.set_result(payload))
        await notifier.execute(f"NOTIFY {channel}, 'hello'")
        try:
            payload = await asyncio.wait_for(got, 10)
        except asyncio.TimeoutError:
            raise AssertionError("no notification within 10 s") from None
        expect_eq("hello", payload, "payload")
    finally:
        await listener.close()
        await notifier.close()


async def cancel_by_timeout():
    conn = await connect()
    try:
        try:
            await conn.execute("SELECT pg_sleep(30)", timeout=0.5)
            raise AssertionError("pg_sleep(30) returned inside a 0.5 s timeout")
        except asyncio.TimeoutError:
            pass
        expect_eq(7, await conn.fetchval("SELECT $1::int", 7), "the connection after the cancel")
    finally:
        await conn.close()


async def cleanup():
    conn = await connect()
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_copy")
    finally:
        await conn.close()


def main():
    r = Runner("asyncpg")
    for label, cache in SETTINGS:
        for fn in (repeat_fetch, explicit_prepare, transactions, cursor_in_transaction, executemany,
                   error_then_repeat):
            r.case(f"{label} {fn.__name__}", run(lambda fn=fn, cache=cache: fn(cache)))
    # Last of the prepared cases: on pgkeel as of 2026-12-06 a statement prepared inside a
    # transaction that rolls back can leave the pool believing in a server statement that does not
    # exist, and later cases on that server connection would fail for it.
    for label, cache in SETTINGS:
        r.case(f"{label} rollback_after_prepare", run(lambda cache=cache: rollback_after_prepare(cache)))
    r.case("copy_in_out", run(copy_in_out))
    r.case("listen_notify", run(listen_notify), timeout=30)
    r.case("cancel_by_timeout", run(cancel_by_timeout), timeout=30)
    try:
        asyncio.run(cleanup())
    except Exception as exc:  # noqa: BLE001
        print(f"note: cleanup failed: {exc}", flush=True)
    r.finish()


if __name__ == "__main__":
    main()
