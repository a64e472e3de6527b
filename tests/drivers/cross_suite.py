#!/usr/bin/env python3
"""cross_suite.py: what no single driver's suite does, by libpq itself (psycopg's pq module).

Two clients whose statements share a name (same name, different SQL); a client whose prepared
statement must survive another client's DEALLOCATE ALL or DISCARD ALL on the same server
connection (and whose own statements those remove, as PostgreSQL does); COPY in and out through
the extended protocol, after which the server connection must be free for another client;
LISTEN by the extended protocol, then NOTIFY from another connection while the listener is idle;
a cancel sent just after its query ended, which must never reach the query another client runs
next on the same server connection; and a client's own cancel, which must work.

    PGHOST=127.0.0.1 PGPORT=6432 PGUSER=app PGPASSWORD=app-pass PGDATABASE=app PGSSLMODE=require \
      DRIVERS_ONE_SERVER_PORT=6433 command -p python3 tests/drivers/cross_suite.py [--only NAME]

DRIVERS_ONE_SERVER_PORT is a listener through which every client shares one server connection
(transaction pooling, pool.max_server_conn_per_node = 1, one worker) for the cases that need
two clients on one server connection; unset, those cases use PGPORT too (as in session pooling,
where clients never share). Output and exit status as in common.py: one PASS/FAIL line per case.
"""
import os
import secrets
import select
import time

from psycopg import pq

from common import Runner, conninfo, expect, expect_eq

ONE_SERVER_PORT = os.environ.get("DRIVERS_ONE_SERVER_PORT") or None
RUN = secrets.token_hex(4)
TABLE = f"drivers_cross_{RUN}"


class Failed(AssertionError):
    def __init__(self, what, res=None, conn=None):
        state = ""
        if res is not None:
            state = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            msg = (res.error_message or b"").decode().strip()
        else:
            msg = (conn.error_message or b"").decode().strip() if conn is not None else ""
        super().__init__(f"{what}: {msg}" if msg else what)
        self.sqlstate = state


class Client:
    """One libpq connection; the one-server listener when shared=True."""

    def __init__(self, shared=False):
        port = ONE_SERVER_PORT if shared and ONE_SERVER_PORT else None
        self.conn = pq.PGconn.connect(conninfo(port).encode())
        if self.conn.status != pq.ConnStatus.OK:
            raise Failed("connect", conn=self.conn)

    def close(self):
        self.conn.finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def check(res, what, want=(pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)):
        if res is None or res.status not in want:
            raise Failed(what, res)
        return res

    def simple(self, sql, what=None):
        return self.check(self.conn.exec_(sql.encode()), what or sql)

    def prepare(self, name, sql):
        # Statement texts of this run alone: a server statement that an earlier run's DEALLOCATE
        # ALL removed behind the pooler's back must not be what fails here.
        sql = f"{sql} /* cross_suite {RUN} */"
        return self.check(self.conn.prepare(name.encode(), sql.encode()), f"prepare {name}")

    def run_prepared(self, name, *params, what=None):
        res = self.conn.exec_prepared(name.encode(), [str(p).encode() for p in params])
        return self.check(res, what or f"execute {name}")

    def value(self, res, row=0, col=0):
        v = res.get_value(row, col)
        return None if v is None else v.decode()

    def drain(self, what):
        """Results of the query sent last, until libpq's None; fails on an error."""
        last = None
        while True:
            res = self.conn.get_result()
            if res is None:
                return last
            last = self.check(res, what, (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK,
                                          pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT))
            if res.status in (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT):
                return res


def statement_names_collide():
    with Client(shared=True) as a, Client(shared=True) as b:
        a.prepare("s1", "SELECT $1::int * 2")
        b.prepare("s1", "SELECT $1::text || '!', true")
        a.prepare("s2", "SELECT 'a' || $1::text")
        for i in range(10):
            expect_eq(str(2 * i), a.value(a.run_prepared("s1", i)), f"a's s1, run {i + 1}")
            res = b.run_prepared("s1", f"b{i}")
            expect_eq((f"b{i}!", "t"), (b.value(res), b.value(res, 0, 1)), f"b's s1, run {i + 1}")
            expect_eq(f"a{i}", a.value(a.run_prepared("s2", i)), f"a's s2, run {i + 1}")
        # b never prepared s2.
        res = b.conn.exec_prepared(b"s2", [b"x"])
        expect(res.status == pq.ExecStatus.FATAL_ERROR, "b ran s2, which only a prepared")
        expect_eq(b"26000", res.error_field(pq.DiagnosticField.SQLSTATE), "b's s2 error")


def reset_by_other(verb):
    """A prepares; B (same server connection) runs `verb`; A's statement still runs."""
    # Statement texts of this case alone: a server statement that an earlier case's reset removed
    # must not be what fails here (see Client.prepare).
    tag = verb.lower().replace(" ", "_")

    def case():
        with Client(shared=True) as a, Client(shared=True) as b:
            a.prepare("keep", f"SELECT $1::int + 100 AS keep_{tag}")
            expect_eq("101", a.value(a.run_prepared("keep", 1, what="a's statement before")), "before")
            b.prepare("keep", f"SELECT 'b:' || $1::text AS keep_{tag}")
            b.simple(verb)
            for i in range(3):
                expect_eq(str(100 + i), a.value(a.run_prepared("keep", i, what=f"a's statement after b's {verb}")),
                          f"a after b's {verb}, run {i + 1}")
    return case


def reset_own(verb):
    """After its own `verb` a client's statements are gone (26000) and the names free again."""
    tag = verb.lower().replace(" ", "_")

    def case():
        with Client(shared=True) as a, Client(shared=True) as b:
            a.prepare("mine", f"SELECT $1::int + 100 AS own_{tag}")
            a.run_prepared("mine", 1, what="a's statement before")
            b.prepare("mine", f"SELECT $1::int + 100 AS own_{tag}")  # the same statement from another client
            b.run_prepared("mine", 1, what="b's statement before")
            a.simple(verb)
            res = a.conn.exec_prepared(b"mine", [b"1"])
            expect(res.status == pq.ExecStatus.FATAL_ERROR, f"a's statement still ran after its own {verb}")
            expect_eq(b"26000", res.error_field(pq.DiagnosticField.SQLSTATE), f"after its own {verb}")
            a.prepare("mine", f"SELECT $1::text || '?' AS own_{tag}")
            expect_eq("x?", a.value(a.run_prepared("mine", "x", what="a's name prepared again, other SQL")),
                      "a's name prepared again")
            expect_eq("101", b.value(b.run_prepared("mine", 1, what=f"b's statement (the text a had) after a's {verb}")),
                      f"b's statement after a's {verb}")
    return case


def copy_extended():
    with Client(shared=True) as a:
        a.simple(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int, v text)")
        # PQsendQueryParams: Parse/Bind/Describe/Execute/Sync, never a simple Query.
        a.conn.send_query_params(f"COPY {TABLE} (id, v) FROM STDIN".encode(), None)
        res = a.drain("COPY FROM STDIN")
        expect_eq(pq.ExecStatus.COPY_IN, res.status, "COPY FROM STDIN state")
        for chunk in range(10):
            rows = "".join(f"{chunk * 1000 + i}\tv{chunk * 1000 + i}\n" for i in range(1000))
            expect_eq(1, a.conn.put_copy_data(rows.encode()), "put_copy_data")
        expect_eq(1, a.conn.put_copy_end(), "put_copy_end")
        res = a.drain("end of COPY FROM STDIN")
        expect_eq(b"COPY 10000", res.command_status, "COPY FROM STDIN's tag")
        a.conn.send_query_params(f"COPY (SELECT id, v FROM {TABLE} ORDER BY id) TO STDOUT".encode(), None)
        res = a.drain("COPY TO STDOUT")
        expect_eq(pq.ExecStatus.COPY_OUT, res.status, "COPY TO STDOUT state")
        lines = 0
        last = b""
        while True:
            n, data = a.conn.get_copy_data(0)
            if n < 0:
                break
            lines += 1
            last = bytes(data)
        res = a.drain("end of COPY TO STDOUT")
        expect_eq(b"COPY 10000", res.command_status, "COPY TO STDOUT's tag")
        expect_eq((10000, b"9999\tv9999\n"), (lines, last), "rows copied out")
        # A is idle: its server connection must be free for another client (else B waits for it
        # until pgkeel's wait_timeout and gets 53300).
        with Client(shared=True) as b:
            expect_eq("10000", b.value(b.simple(f"SELECT count(*) FROM {TABLE}")), "another client after the COPY")
        expect_eq("1", a.value(a.simple("SELECT 1")), "a after the COPY")
        a.simple(f"DROP TABLE {TABLE}")


def listen_extended():
    channel = f"drivers_{secrets.token_hex(4)}"
    with Client() as listener, Client() as notifier:
        listener.conn.send_query_params(f"LISTEN {channel}".encode(), None)
        listener.drain("LISTEN by the extended protocol")
        notifier.conn.send_query_params(f"NOTIFY {channel}, 'hello'".encode(), None)
        notifier.drain("NOTIFY")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            select.select([listener.conn.socket], [], [], 0.5)
            listener.conn.consume_input()
            n = listener.conn.notifies()
            if n is not None:
                expect_eq((channel.encode(), b"hello"), (n.relname, n.extra), "notification")
                return
        raise AssertionError("no notification within 10 s")


def cancel_after_end(b_first):
    """A's query ends; A's cancel goes out; B runs pg_sleep on the same server connection."""
    def case():
        with Client(shared=True) as a, Client(shared=True) as b:
            cancel = a.conn.get_cancel()
            for i in range(10):
                expect_eq("1", a.value(a.simple("SELECT 1")), f"a's short query, round {i + 1}")
                if b_first:  # B's query is on its way before A's cancel is
                    b.conn.send_query(b"SELECT pg_sleep(0.2)")
                    cancel.cancel()
                else:
                    cancel.cancel()
                    b.conn.send_query(b"SELECT pg_sleep(0.2)")
                res = b.conn.get_result()
                while b.conn.get_result() is not None:
                    pass
                if res is None or res.status != pq.ExecStatus.TUPLES_OK:
                    raise Failed(f"b's pg_sleep after a's late cancel, round {i + 1}", res)
    return case


def cancel_own():
    with Client(shared=True) as a:
        cancel = a.conn.get_cancel()
        started = time.monotonic()
        a.conn.send_query(b"SELECT pg_sleep(20)")
        a.conn.nonblocking = 1
        # Cancel until the answer comes (the first may arrive before the query started).
        while time.monotonic() - started < 10:
            cancel.cancel()
            select.select([a.conn.socket], [], [], 0.2)
            a.conn.consume_input()
            if not a.conn.is_busy():
                break
        a.conn.nonblocking = 0
        res = a.conn.get_result()
        while a.conn.get_result() is not None:
            pass
        expect(res is not None and res.status == pq.ExecStatus.FATAL_ERROR,
               f"pg_sleep(20) was not cancelled within 10 s ({time.monotonic() - started:.1f}s)")
        expect_eq(b"57014", res.error_field(pq.DiagnosticField.SQLSTATE), "the cancelled query's SQLSTATE")
        expect_eq("1", a.value(a.simple("SELECT 1")), "after the cancel")


def main():
    r = Runner("cross")
    r.case("statement_names_collide", statement_names_collide)
    for verb in ("DEALLOCATE ALL", "DISCARD ALL"):
        key = verb.lower().replace(" ", "_")
        r.case(f"{key}_by_other_client_keeps_mine", reset_by_other(verb))
        r.case(f"{key}_removes_own_statements", reset_own(verb))
    r.case("copy_extended_in_out_then_connection_free", copy_extended)
    r.case("listen_extended_notify_idle", listen_extended, timeout=30)
    r.case("late_cancel_then_other_client_query", cancel_after_end(b_first=False))
    r.case("late_cancel_racing_other_client_query", cancel_after_end(b_first=True))
    r.case("cancel_own_query", cancel_own, timeout=30)
    r.finish()


if __name__ == "__main__":
    main()
