// JdbcSuite — exercises pgJDBC the way an ERP / web-shop application does, so the same
// program can be run against PostgreSQL directly and through pgkeel: the proxy must be
// indistinguishable from a direct connection. Single file, no build tool:
//
//   javac -cp /usr/share/java/postgresql.jar -d OUTDIR tests/jdbc/JdbcSuite.java
//   java -cp OUTDIR:/usr/share/java/postgresql.jar JdbcSuite <jdbc-url> <user> <password>
//
// Prints `ok <name>` or `FAIL <name>: <reason>` per check and finally `N passed, M failed`;
// exits 0 only if every check passed (tests/jdbc/run.sh does the two steps). Everything it
// creates lives in one schema with a random suffix, dropped at the end, so runs on one database
// do not interfere; a user without CREATE on the database gets prefixed tables in public instead.

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.Reader;
import java.io.StringReader;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.ParameterMetaData;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public final class JdbcSuite {
    /** Whole-run deadline: a hung proxy must not hang the caller forever. */
    private static final long kWatchdogSeconds = Long.getLong("jdbcsuite.watchdog", 600);
    /** Per-connection socket timeout (seconds) so a stuck read fails a check instead of the run. */
    private static final String kSocketTimeout = "120";
    /** FAIL lines are cut to this many characters. */
    private static final int kMaxReason = 600;

    private final String url;
    private final String user;
    private final String password;
    // Every table of this run lives in its own schema; a user who may not create schemas
    // (e.g. md5user) gets prefixed tables in public instead.
    private String schema;
    private String prefix = "";
    private boolean ownSchema = true;
    private static final List<String> kTables = List.of("items", "batch", "copy", "uniq", "tx", "blobs", "unqualified");
    private final String suffix;
    private int passed = 0;
    private int failed = 0;

    @FunctionalInterface
    interface Body { void run() throws Exception; }

    @FunctionalInterface
    interface ConnBody { void run(Connection c) throws Exception; }

    private JdbcSuite(String url, String user, String password) {
        this.url = url;
        this.user = user;
        this.password = password;
        this.suffix = HexFormat.of().formatHex(SecureRandom.getSeed(4)).toLowerCase();
        this.schema = "jdbcsuite_" + suffix;
    }

    public static void main(String[] args) {
        if (args.length != 3) {
            System.err.println("usage: JdbcSuite <jdbc-url> <user> <password>");
            System.exit(2);
        }
        JdbcSuite suite = new JdbcSuite(args[0], args[1], args[2]);
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(kWatchdogSeconds * 1000);
            } catch (InterruptedException e) {
                return;
            }
            synchronized (suite) {
                suite.fail("watchdog", "run exceeded " + kWatchdogSeconds + " s; giving up");
                suite.printSummary();
            }
            Runtime.getRuntime().halt(1);
        }, "watchdog");
        watchdog.setDaemon(true);
        watchdog.start();
        suite.runAll();
        synchronized (suite) {
            suite.printSummary();
            System.exit(suite.failed == 0 ? 0 : 1);
        }
    }

    // ---------------------------------------------------------------- plumbing

    private synchronized void ok(String name) {
        passed++;
        System.out.println("ok " + name);
        System.out.flush();
    }

    private synchronized void fail(String name, String reason) {
        failed++;
        String oneLine = reason.replaceAll("\\s+", " ").trim();
        if (oneLine.length() > kMaxReason) {   // batch errors quote the whole rewritten INSERT
            oneLine = oneLine.substring(0, kMaxReason) + " ... (" + oneLine.length() + " chars)";
        }
        System.out.println("FAIL " + name + ": " + oneLine);
        System.out.flush();
    }

    private synchronized void printSummary() {
        System.out.println(passed + " passed, " + failed + " failed");
        System.out.flush();
    }

    private void check(String name, Body body) {
        try {
            body.run();
            ok(name);
        } catch (Throwable t) {
            fail(name, describe(t));
        }
    }

    private static String describe(Throwable t) {
        StringBuilder sb = new StringBuilder();
        if (t instanceof AssertionError) {
            sb.append(t.getMessage());
        } else {
            sb.append(t.getClass().getSimpleName());
            if (t instanceof SQLException se && se.getSQLState() != null) {
                sb.append(" [").append(se.getSQLState()).append(']');
            }
            sb.append(": ").append(t.getMessage());
        }
        if (t.getCause() != null && t.getCause() != t && !(t instanceof AssertionError)) {
            sb.append(" (cause: ").append(t.getCause()).append(')');
        }
        return sb.toString();
    }

    private Connection connect() throws SQLException {
        return connect(new Properties());
    }

    private Connection connect(Properties extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("socketTimeout", kSocketTimeout);
        p.setProperty("connectTimeout", "10");
        p.setProperty("ApplicationName", "jdbcsuite");
        p.putAll(extra);
        return DriverManager.getConnection(url, p);
    }

    private static Properties props(String... kv) {
        Properties p = new Properties();
        for (int i = 0; i + 1 < kv.length; i += 2) {
            p.setProperty(kv[i], kv[i + 1]);
        }
        return p;
    }

    private void withConn(ConnBody body) throws Exception {
        try (Connection c = connect()) {
            body.run(c);
        }
    }

    private static void expect(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    private static void expectEq(Object expected, Object actual, String what) {
        if (expected == null ? actual != null : !expected.equals(actual)) {
            throw new AssertionError(what + ": expected <" + expected + "> but got <" + actual + ">");
        }
    }

    /** Runs body, which must fail with the given SQLSTATE; returns the exception. */
    private static SQLException expectSqlState(String state, Body body) throws Exception {
        try {
            body.run();
        } catch (SQLException e) {
            if (!state.equals(e.getSQLState())) {
                throw new AssertionError("expected SQLSTATE " + state + " but got " + e.getSQLState()
                        + ": " + e.getMessage());
            }
            return e;
        }
        throw new AssertionError("expected SQLSTATE " + state + " but the statement succeeded");
    }

    private static long queryLong(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            expect(rs.next(), "no row from: " + sql);
            return rs.getLong(1);
        }
    }

    private static String queryString(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            expect(rs.next(), "no row from: " + sql);
            return rs.getString(1);
        }
    }

    private static void exec(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute(sql);
        }
    }

    /** The connection answers a trivial query correctly. */
    private static void expectUsable(Connection c) throws SQLException {
        expectEq(1L, queryLong(c, "SELECT 1"), "connection usable afterwards");
    }

    /** Schema-qualified name of one of this run's tables. */
    private String t(String table) {
        return schema + "." + bare(table);
    }

    /** Name of one of this run's tables inside its schema. */
    private String bare(String table) {
        return prefix + table;
    }

    // ---------------------------------------------------------------- the run

    private void runAll() {
        try (Connection c = connect()) {
            try {
                exec(c, "CREATE SCHEMA " + schema);
            } catch (SQLException e) {
                if (!"42501".equals(e.getSQLState())) {
                    throw e;
                }
                ownSchema = false;
                schema = "public";
                prefix = "jdbcsuite_" + suffix + "_";
                System.err.println("jdbcsuite: no CREATE on the database for " + user + "; using tables " + prefix
                        + "* in public");
            }
            exec(c, "CREATE TABLE " + t("items") + " (id int PRIMARY KEY, v text NOT NULL)");
            exec(c, "CREATE TABLE " + t("batch") + " (id int PRIMARY KEY, v text NOT NULL)");
            exec(c, "CREATE TABLE " + t("copy") + " (id int PRIMARY KEY, v text NOT NULL)");
            exec(c, "CREATE TABLE " + t("uniq") + " (id int PRIMARY KEY)");
            exec(c, "CREATE TABLE " + t("tx") + " (v text NOT NULL)");
            exec(c, "CREATE TABLE " + t("blobs") + " (id int PRIMARY KEY, b bytea, s text)");
            ok("setup");
        } catch (Throwable e) {
            fail("setup", describe(e));
            return;
        }
        try {
            checkPrepared();
            checkBatch();
            checkCopy();
            checkListenNotify();
            checkCancel();
            checkTimeouts();
            checkErrors();
            checkTransactions();
            checkLarge();
            checkDescribeAndSchema();
            checkSessionBehaviour();
        } finally {
            check("cleanup", () -> withConn(c -> {
                if (ownSchema) {
                    exec(c, "DROP SCHEMA " + schema + " CASCADE");
                } else {
                    for (String table : kTables) {
                        exec(c, "DROP TABLE IF EXISTS " + t(table));
                    }
                }
            }));
        }
    }

    // ---------------------------------------------------------------- prepared statements

    /** One PreparedStatement executed 20 times with changing parameters (and once-changing types). */
    private static void preparedLoop(Connection c) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(
                "SELECT ?::int8 * 2, ?::text || '-x', ?::numeric + 0.5, now() IS NOT NULL")) {
            for (int i = 0; i < 20; i++) {
                if (i % 7 == 6) {
                    ps.setLong(1, i);          // a type change makes pgJDBC re-prepare
                } else {
                    ps.setInt(1, i);
                }
                ps.setString(2, "v" + i);
                ps.setBigDecimal(3, java.math.BigDecimal.valueOf(i));
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), "row on iteration " + i);
                    expectEq((long) i * 2, rs.getLong(1), "col1 on iteration " + i);
                    expectEq("v" + i + "-x", rs.getString(2), "col2 on iteration " + i);
                    expectEq(java.math.BigDecimal.valueOf(i).add(new java.math.BigDecimal("0.5")),
                            rs.getBigDecimal(3), "col3 on iteration " + i);
                    expect(rs.getBoolean(4), "col4 on iteration " + i);
                    expect(!rs.next(), "single row on iteration " + i);
                }
            }
        }
    }

    /**
     * Names of this session's protocol-level prepared statements (pgJDBC's S_n), leaving out
     * this very query, which the driver may itself have prepared under a low threshold.
     */
    private static List<String> namedStatements(Connection c) throws SQLException {
        List<String> names = new ArrayList<>();
        try (Statement s = c.createStatement();
             ResultSet rs = s.executeQuery(
                     "SELECT name FROM pg_prepared_statements WHERE NOT from_sql"
                             + " AND statement NOT LIKE '%pg_prepared_statements%' ORDER BY name")) {
            while (rs.next()) {
                names.add(rs.getString(1));
            }
        }
        return names;
    }

    private void checkPrepared() {
        check("prepared_reuse_default_threshold", () -> withConn(c -> {
            preparedLoop(c);
            expect(!namedStatements(c).isEmpty(),
                    "no server-side named statement after 20 executions (pg_prepared_statements empty)");
        }));

        check("prepared_reuse_threshold_1", () -> {
            try (Connection c = connect(props("prepareThreshold", "1"))) {
                preparedLoop(c);
                // DML through a named statement as well, with binary-transferred types.
                try (PreparedStatement ins = c.prepareStatement(
                        "INSERT INTO " + t("items") + " (id, v) VALUES (?, ?)");
                     PreparedStatement sel = c.prepareStatement(
                        "SELECT v, ?::date, ?::uuid FROM " + t("items") + " WHERE id = ?")) {
                    for (int i = 1; i <= 20; i++) {
                        ins.setInt(1, i);
                        ins.setString(2, "item-" + i);
                        expectEq(1, ins.executeUpdate(), "insert count " + i);
                    }
                    java.util.UUID u = java.util.UUID.randomUUID();
                    for (int i = 1; i <= 20; i++) {
                        sel.setDate(1, java.sql.Date.valueOf("2024-02-" + String.format("%02d", i)));
                        sel.setObject(2, u);
                        sel.setInt(3, i);
                        try (ResultSet rs = sel.executeQuery()) {
                            expect(rs.next(), "row for id " + i);
                            expectEq("item-" + i, rs.getString(1), "v for id " + i);
                            expectEq(java.sql.Date.valueOf("2024-02-" + String.format("%02d", i)),
                                    rs.getDate(2), "date for id " + i);
                            expectEq(u, rs.getObject(3), "uuid for id " + i);
                        }
                    }
                }
                List<String> names = namedStatements(c);
                expect(names.stream().anyMatch(n -> n.startsWith("S_")),
                        "expected S_n statements in pg_prepared_statements, got " + names);
            }
        });

        check("prepared_cache_eviction", () -> {
            // More distinct statements than the driver's cache (256): it closes the oldest
            // server statements (Close 'S') while the session goes on.
            try (Connection c = connect(props("prepareThreshold", "1", "preparedStatementCacheQueries", "64"))) {
                for (int round = 0; round < 2; round++) {
                    for (int i = 0; i < 150; i++) {
                        try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + " + i)) {
                            ps.setInt(1, round);
                            try (ResultSet rs = ps.executeQuery()) {
                                expect(rs.next(), "row");
                                expectEq(round + i, rs.getInt(1), "statement " + i + " round " + round);
                            }
                        }
                    }
                }
                int n = namedStatements(c).size();
                expect(n <= 64, "driver cache limit 64 but " + n + " server statements remain");
                expectUsable(c);
            }
        });

        check("prepared_names_fresh_per_connection", () -> {
            // Every new connection starts at S_1 again; a server session handed over with
            // the previous client's statements would answer 42P05 (already exists).
            for (int i = 0; i < 5; i++) {
                try (Connection c = connect(props("prepareThreshold", "1"))) {
                    expectEq(List.of(), namedStatements(c), "named statements at connect #" + i);
                    try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * " + (i + 2))) {
                        ps.setInt(1, 21);
                        try (ResultSet rs = ps.executeQuery()) {
                            expect(rs.next(), "row");
                            expectEq(21 * (i + 2), rs.getInt(1), "result on connection #" + i);
                        }
                    }
                }
            }
        });

        check("simple_query_mode", () -> {
            try (Connection c = connect(props("preferQueryMode", "simple"))) {
                try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1, ?::text")) {
                    for (int i = 0; i < 10; i++) {
                        ps.setInt(1, i);
                        ps.setString(2, "it's " + i);   // quoting done by the driver
                        try (ResultSet rs = ps.executeQuery()) {
                            expect(rs.next(), "row");
                            expectEq(i + 1, rs.getInt(1), "col1");
                            expectEq("it's " + i, rs.getString(2), "col2");
                        }
                    }
                }
                expectEq(List.of(), namedStatements(c), "simple mode creates no named statements");
            }
        });
    }

    // ---------------------------------------------------------------- batches

    private void checkBatch() {
        for (boolean rewrite : new boolean[] {false, true}) {
            check("batch_insert_1000_rewrite_" + rewrite, () -> {
                try (Connection c = connect(props("reWriteBatchedInserts", Boolean.toString(rewrite)))) {
                    exec(c, "TRUNCATE " + t("batch"));
                    int[] counts;
                    try (PreparedStatement ps = c.prepareStatement(
                            "INSERT INTO " + t("batch") + " (id, v) VALUES (?, ?)")) {
                        for (int i = 0; i < 1000; i++) {
                            ps.setInt(1, i);
                            ps.setString(2, "row " + i);
                            ps.addBatch();
                        }
                        counts = ps.executeBatch();
                    }
                    expectEq(1000, counts.length, "update count array length");
                    for (int n : counts) {
                        expect(n == 1 || n == Statement.SUCCESS_NO_INFO, "unexpected update count " + n);
                    }
                    expectEq(1000L, queryLong(c, "SELECT count(*) FROM " + t("batch")), "row count");
                    expectEq(499500L, queryLong(c, "SELECT sum(id) FROM " + t("batch")), "sum of ids");
                    expectEq("row 999", queryString(c, "SELECT v FROM " + t("batch") + " WHERE id = 999"),
                            "last value");
                }
            });
        }

        check("batch_error_midway_autocommit", () -> {
            try (Connection c = connect()) {
                exec(c, "TRUNCATE " + t("uniq"));
                exec(c, "INSERT INTO " + t("uniq") + " VALUES (5)");
                BatchUpdateException bue = null;
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t("uniq") + " VALUES (?)")) {
                    for (int i = 1; i <= 10; i++) {
                        ps.setInt(1, i);
                        ps.addBatch();
                    }
                    ps.executeBatch();
                } catch (BatchUpdateException e) {
                    bue = e;
                }
                expect(bue != null, "batch with a duplicate key succeeded");
                SQLException cause = bue.getNextException() != null ? bue.getNextException() : bue;
                expectEq("23505", cause.getSQLState(), "SQLSTATE of the failing batch entry");
                // pgJDBC sends one Sync for the batch: the batch is one implicit transaction
                // and none of it stays.
                expectEq(1L, queryLong(c, "SELECT count(*) FROM " + t("uniq")), "rows after failed batch");
                expectUsable(c);
            }
        });

        check("batch_error_midway_transaction", () -> {
            try (Connection c = connect(props("reWriteBatchedInserts", "true"))) {
                exec(c, "TRUNCATE " + t("uniq"));
                exec(c, "INSERT INTO " + t("uniq") + " VALUES (500)");
                c.setAutoCommit(false);
                exec(c, "INSERT INTO " + t("uniq") + " VALUES (-1)");
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t("uniq") + " VALUES (?)")) {
                    for (int i = 1; i <= 1000; i++) {
                        ps.setInt(1, i);
                        ps.addBatch();
                    }
                    expectSqlState("23505", ps::executeBatch);
                }
                expectSqlState("25P02", () -> queryLong(c, "SELECT 1"));
                c.rollback();
                c.setAutoCommit(true);
                expectEq(1L, queryLong(c, "SELECT count(*) FROM " + t("uniq")), "rows after rollback");
                expectUsable(c);
            }
        });
    }

    // ---------------------------------------------------------------- COPY

    private static String copyPayload(int rows) {
        StringBuilder sb = new StringBuilder(rows * 24);
        for (int i = 0; i < rows; i++) {
            sb.append(i).append('\t').append("copy value ").append(i).append(" \u00e9\u00df").append('\n');
        }
        return sb.toString();
    }

    private void checkCopy() {
        check("copy_in_out_10000", () -> withConn(c -> {
            exec(c, "TRUNCATE " + t("copy"));
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            String payload = copyPayload(10_000);
            long in = cm.copyIn("COPY " + t("copy") + " (id, v) FROM STDIN", new StringReader(payload));
            expectEq(10_000L, in, "rows reported by copyIn");
            expectEq(10_000L, queryLong(c, "SELECT count(*) FROM " + t("copy")), "rows in table");

            StringWriter w = new StringWriter();
            long out = cm.copyOut("COPY (SELECT id, v FROM " + t("copy") + " ORDER BY id) TO STDOUT", w);
            expectEq(10_000L, out, "rows reported by copyOut");
            String text = w.toString();
            expectEq(10_000L, text.chars().filter(ch -> ch == '\n').count(), "lines copied out");
            expectEq(payload.length(), text.length(), "characters copied out");
            expect(payload.equals(text), "copied-out text differs from what was copied in");

            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            cm.copyOut("COPY " + t("copy") + " TO STDOUT WITH (FORMAT csv)", bytes);
            expectEq(10_000L, bytes.toString(StandardCharsets.UTF_8).lines().count(), "csv lines");

            ByteArrayOutputStream bin = new ByteArrayOutputStream();
            cm.copyOut("COPY (SELECT id, v FROM " + t("copy") + " ORDER BY id) TO STDOUT", bin);
            expectEq(payload.getBytes(StandardCharsets.UTF_8).length, bin.size(), "bytes copied out");
            expectUsable(c);
        }));

        check("copy_in_bad_data", () -> withConn(c -> {
            exec(c, "TRUNCATE " + t("copy"));
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            String payload = copyPayload(2000) + "not-a-number\tbad\n" + "99999\tafter\n";
            expectSqlState("22P02", () -> cm.copyIn("COPY " + t("copy") + " (id, v) FROM STDIN",
                    new StringReader(payload)));
            expectEq(0L, queryLong(c, "SELECT count(*) FROM " + t("copy")), "rows after failed COPY");
            expectUsable(c);
        }));

        check("copy_in_client_abort", () -> withConn(c -> {
            // The reader fails part-way: pgJDBC answers with CopyFail and the server aborts.
            exec(c, "TRUNCATE " + t("copy"));
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            Reader failing = new Reader() {
                private final StringReader inner = new StringReader(copyPayload(5000));
                private int served = 0;

                @Override
                public int read(char[] buf, int off, int len) throws IOException {
                    if (served > 40_000) {
                        throw new IOException("simulated client-side read failure");
                    }
                    int n = inner.read(buf, off, Math.min(len, 1000));
                    served += Math.max(n, 0);
                    return n;
                }

                @Override
                public void close() {
                }
            };
            Exception caught = null;
            try {
                cm.copyIn("COPY " + t("copy") + " (id, v) FROM STDIN", failing);
            } catch (IOException | SQLException e) {
                caught = e;
            }
            expect(caught != null, "copyIn with a failing reader succeeded");
            expectEq(0L, queryLong(c, "SELECT count(*) FROM " + t("copy")), "rows after aborted COPY");
            expectUsable(c);
        }));
    }

    // ---------------------------------------------------------------- LISTEN / NOTIFY

    private static List<PGNotification> awaitNotifications(Connection c, int want, long timeoutMs)
            throws SQLException {
        PGConnection pg = c.unwrap(PGConnection.class);
        List<PGNotification> got = new ArrayList<>();
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        while (got.size() < want) {
            long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
            if (left <= 0) {
                break;
            }
            PGNotification[] batch = pg.getNotifications((int) left);
            if (batch != null) {
                got.addAll(Arrays.asList(batch));
            }
        }
        return got;
    }

    private void checkListenNotify() {
        String channel = "jdbcsuite_" + suffix;
        check("listen_notify", () -> {
            try (Connection listener = connect(); Connection sender = connect()) {
                exec(listener, "LISTEN " + channel);
                exec(sender, "NOTIFY " + channel + ", 'hello'");
                sender.setAutoCommit(false);
                exec(sender, "SELECT pg_notify('" + channel + "', 'rolled back')");
                sender.rollback();
                exec(sender, "SELECT pg_notify('" + channel + "', 'committed')");
                sender.commit();
                sender.setAutoCommit(true);
                long senderPid = queryLong(sender, "SELECT pg_backend_pid()");

                List<PGNotification> got = awaitNotifications(listener, 2, 5000);
                List<String> payloads = got.stream().map(PGNotification::getParameter).toList();
                expectEq(List.of("hello", "committed"), payloads, "payloads received");
                for (PGNotification n : got) {
                    expectEq(channel, n.getName(), "channel name");
                    expectEq(senderPid, (long) n.getPID(), "sender pid in notification");
                }
                // Nothing else is pending (the rolled-back one must never arrive).
                expectEq(List.of(), awaitNotifications(listener, 1, 300).stream()
                        .map(PGNotification::getParameter).toList(), "extra notifications");

                // A notification that arrives while the listener is idle in getNotifications.
                ExecutorService ex = Executors.newSingleThreadExecutor();
                try {
                    Future<?> f = ex.submit(() -> {
                        Thread.sleep(500);
                        exec(sender, "NOTIFY " + channel + ", 'while waiting'");
                        return null;
                    });
                    long t0 = System.nanoTime();
                    List<PGNotification> late = awaitNotifications(listener, 1, 5000);
                    long waited = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
                    f.get(10, TimeUnit.SECONDS);
                    expectEq(List.of("while waiting"),
                            late.stream().map(PGNotification::getParameter).toList(), "payload while idle");
                    expect(waited < 4000, "notification took " + waited + " ms to arrive");
                } finally {
                    ex.shutdownNow();
                }
                exec(listener, "UNLISTEN " + channel);
                exec(sender, "NOTIFY " + channel + ", 'after unlisten'");
                expectEq(0, awaitNotifications(listener, 1, 300).size(), "notifications after UNLISTEN");
                expectUsable(listener);
            }
        });
    }

    // ---------------------------------------------------------------- cancel

    /** Waits until a query containing marker is active on some other backend. */
    private static void awaitActive(Connection observer, String marker, long timeoutMs) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        String sql = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid()"
                + " AND query LIKE '%" + marker + "%'";
        while (System.nanoTime() < deadline) {
            if (queryLong(observer, sql) > 0) {
                return;
            }
            Thread.sleep(20);
        }
        throw new AssertionError("query " + marker + " never became active");
    }

    private void checkCancel() {
        check("cancel_other_thread", () -> {
            String victimMark = "victim_" + suffix;
            String bystanderMark = "bystander_" + suffix;
            ExecutorService ex = Executors.newFixedThreadPool(2);
            try (Connection victim = connect(); Connection bystander = connect(); Connection observer = connect()) {
                Statement victimStmt = victim.createStatement();
                Future<Long> bystanderResult = ex.submit(() -> {
                    long t0 = System.nanoTime();
                    try (Statement s = bystander.createStatement();
                         ResultSet rs = s.executeQuery("SELECT /*" + bystanderMark + "*/ pg_sleep(3), 42")) {
                        expect(rs.next(), "bystander row");
                        expectEq(42, rs.getInt(2), "bystander result");
                    }
                    return TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
                });
                Future<SQLException> victimResult = ex.submit(() -> {
                    try {
                        victimStmt.executeQuery("SELECT /*" + victimMark + "*/ pg_sleep(30)");
                    } catch (SQLException e) {
                        return e;
                    }
                    return null;
                });
                awaitActive(observer, bystanderMark, 5000);
                awaitActive(observer, victimMark, 5000);
                long t0 = System.nanoTime();
                victimStmt.cancel();
                SQLException e;
                try {
                    e = victimResult.get(10, TimeUnit.SECONDS);
                } catch (TimeoutException te) {
                    throw new AssertionError("cancelled query still running 10 s after cancel()");
                }
                long cancelMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
                expect(e != null, "pg_sleep(30) completed although cancelled");
                expectEq("57014", e.getSQLState(), "SQLSTATE of the cancelled query");
                expect(cancelMs < 5000, "cancel took " + cancelMs + " ms");

                long bystanderMs;
                try {
                    bystanderMs = bystanderResult.get(15, TimeUnit.SECONDS);
                } catch (java.util.concurrent.ExecutionException ee) {
                    throw new AssertionError("query on the other connection failed: " + describe(ee.getCause()));
                }
                expect(bystanderMs >= 2900, "other connection's pg_sleep(3) returned after " + bystanderMs + " ms");
                expectUsable(victim);
                expectUsable(victimStmt.getConnection());
                try (ResultSet rs = victimStmt.executeQuery("SELECT 7")) {
                    expect(rs.next() && rs.getInt(1) == 7, "cancelled statement object reusable");
                }
                victimStmt.close();
                expectUsable(bystander);
            } finally {
                ex.shutdownNow();
            }
        });

        check("query_timeout", () -> withConn(c -> {
            // setQueryTimeout is implemented by pgJDBC with a cancel request from a timer.
            try (Statement s = c.createStatement()) {
                s.setQueryTimeout(1);
                long t0 = System.nanoTime();
                expectSqlState("57014", () -> s.executeQuery("SELECT pg_sleep(10)"));
                long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
                expect(ms < 5000, "query timeout took " + ms + " ms");
            }
            expectUsable(c);
        }));
    }

    // ---------------------------------------------------------------- timeouts and errors

    private void checkTimeouts() {
        check("statement_timeout", () -> withConn(c -> {
            exec(c, "SET statement_timeout = '200ms'");
            long t0 = System.nanoTime();
            expectSqlState("57014", () -> exec(c, "SELECT pg_sleep(2)"));
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            expect(ms < 1800, "statement_timeout fired after " + ms + " ms");
            expectUsable(c);
            expectEq("200ms", queryString(c, "SHOW statement_timeout"), "setting kept");
            exec(c, "RESET statement_timeout");
            expectEq(1L, queryLong(c, "SELECT count(*) FROM pg_sleep(0.3)"), "sleep after reset");
        }));
    }

    private void checkErrors() {
        check("unique_violation_autocommit", () -> withConn(c -> {
            exec(c, "TRUNCATE " + t("uniq"));
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t("uniq") + " VALUES (?)")) {
                ps.setInt(1, 1);
                ps.executeUpdate();
                SQLException e = expectSqlState("23505", ps::executeUpdate);
                expect(e.getMessage().contains("duplicate key"), "error message: " + e.getMessage());
                ps.setInt(1, 2);
                expectEq(1, ps.executeUpdate(), "insert after the violation");
            }
            expectEq(2L, queryLong(c, "SELECT count(*) FROM " + t("uniq")), "rows");
            expectUsable(c);
        }));

        check("unique_violation_transaction", () -> withConn(c -> {
            exec(c, "TRUNCATE " + t("uniq"));
            exec(c, "INSERT INTO " + t("uniq") + " VALUES (1)");
            c.setAutoCommit(false);
            exec(c, "INSERT INTO " + t("uniq") + " VALUES (2)");
            expectSqlState("23505", () -> exec(c, "INSERT INTO " + t("uniq") + " VALUES (1)"));
            expectSqlState("25P02", () -> queryLong(c, "SELECT 1"));
            c.rollback();
            expectUsable(c);
            c.commit();
            c.setAutoCommit(true);
            expectEq(1L, queryLong(c, "SELECT count(*) FROM " + t("uniq")), "rows after rollback");
        }));

        check("savepoint_rollback", () -> withConn(c -> {
            exec(c, "TRUNCATE " + t("uniq"));
            c.setAutoCommit(false);
            exec(c, "INSERT INTO " + t("uniq") + " VALUES (1)");
            Savepoint sp = c.setSavepoint();
            expectSqlState("23505", () -> exec(c, "INSERT INTO " + t("uniq") + " VALUES (1)"));
            c.rollback(sp);
            exec(c, "INSERT INTO " + t("uniq") + " VALUES (2)");
            c.commit();
            c.setAutoCommit(true);
            expectEq(2L, queryLong(c, "SELECT count(*) FROM " + t("uniq")), "rows after savepoint rollback");
        }));

        check("autosave_always", () -> {
            // ERP frameworks commonly run with autosave so one failed statement does not
            // doom the transaction: the driver wraps each statement in a savepoint.
            try (Connection c = connect(props("autosave", "always"))) {
                exec(c, "TRUNCATE " + t("uniq"));
                c.setAutoCommit(false);
                exec(c, "INSERT INTO " + t("uniq") + " VALUES (1)");
                expectSqlState("23505", () -> exec(c, "INSERT INTO " + t("uniq") + " VALUES (1)"));
                exec(c, "INSERT INTO " + t("uniq") + " VALUES (3)");
                c.commit();
                c.setAutoCommit(true);
                expectEq(2L, queryLong(c, "SELECT count(*) FROM " + t("uniq")), "rows with autosave");
            }
        });

        check("syntax_and_runtime_errors", () -> withConn(c -> {
            expectSqlState("42601", () -> exec(c, "SELEC 1"));
            expectSqlState("42P01", () -> exec(c, "SELECT * FROM " + t("no_such_table")));
            expectSqlState("22012", () -> queryLong(c, "SELECT 1/0"));
            try (PreparedStatement ps = c.prepareStatement("SELECT 10 / ?::int")) {
                ps.setInt(1, 0);
                expectSqlState("22012", ps::executeQuery);
                ps.setInt(1, 5);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next() && rs.getInt(1) == 2, "prepared statement after its own error");
                }
            }
            SQLException e = expectSqlState("P0001", () -> exec(c,
                    "DO $$ BEGIN RAISE EXCEPTION 'custom % error', 42 USING DETAIL = 'some detail'; END $$"));
            expect(e.getMessage().contains("custom 42 error"), "message: " + e.getMessage());
            expectUsable(c);
        }));
    }

    // ---------------------------------------------------------------- transactions

    private static long countTx(Connection c, String tbl, String v) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("SELECT count(*) FROM " + tbl + " WHERE v = ?")) {
            ps.setString(1, v);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                return rs.getLong(1);
            }
        }
    }

    private void checkTransactions() {
        check("transaction_commit_rollback", () -> {
            try (Connection a = connect(); Connection b = connect()) {
                String tbl = t("tx");
                a.setAutoCommit(false);
                try (PreparedStatement ins = a.prepareStatement("INSERT INTO " + tbl + " (v) VALUES (?)")) {
                    ins.setString(1, "committed");
                    ins.executeUpdate();
                    expectEq(1L, countTx(a, tbl, "committed"), "own insert visible inside the transaction");
                    expectEq(0L, countTx(b, tbl, "committed"), "uncommitted insert visible to another connection");
                    a.commit();
                    expectEq(1L, countTx(b, tbl, "committed"), "committed insert visible to another connection");

                    ins.setString(1, "rolled-back");
                    ins.executeUpdate();
                    expectEq(1L, countTx(a, tbl, "rolled-back"), "own insert before rollback");
                    a.rollback();
                    expectEq(0L, countTx(a, tbl, "rolled-back"), "rolled-back insert visible to its own connection");
                    expectEq(0L, countTx(b, tbl, "rolled-back"), "rolled-back insert visible to another connection");
                }
                a.setAutoCommit(true);
                expectEq("idle", queryString(b,
                        "SELECT state FROM pg_stat_activity WHERE pid = " + queryLong(a, "SELECT pg_backend_pid()")),
                        "other session's state after commit/rollback");
            }
        });

        check("transaction_isolation_and_read_only", () -> withConn(c -> {
            c.setAutoCommit(false);
            c.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
            expectEq("serializable", queryString(c, "SHOW transaction_isolation"), "isolation level");
            c.commit();
            c.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
            c.setReadOnly(true);
            expectSqlState("25006", () -> exec(c, "INSERT INTO " + t("tx") + " (v) VALUES ('ro')"));
            c.rollback();
            c.setReadOnly(false);
            exec(c, "INSERT INTO " + t("tx") + " (v) VALUES ('rw')");
            c.commit();
            c.setAutoCommit(true);
            expectEq(1L, countTx(c, t("tx"), "rw"), "write after read-only transaction");
        }));
    }

    // ---------------------------------------------------------------- large data

    private static final String kSeriesSql =
            "SELECT g, md5(g::text) FROM generate_series(1, 200000) g ORDER BY g";

    private static void readSeries(ResultSet rs, Runnable midway) throws SQLException {
        long rows = 0;
        long sum = 0;
        while (rs.next()) {
            rows++;
            long g = rs.getLong(1);
            sum += g;
            if (g != rows) {
                throw new AssertionError("row " + rows + " has g=" + g);
            }
            if (rs.getString(2).length() != 32) {
                throw new AssertionError("bad md5 at row " + rows);
            }
            if (rows == 50_000 && midway != null) {
                midway.run();
            }
        }
        expectEq(200_000L, rows, "rows fetched");
        expectEq(200_000L * 200_001L / 2, sum, "sum of g");
    }

    private void checkLarge() {
        check("large_result_fetch_size", () -> withConn(c -> {
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement(kSeriesSql)) {
                ps.setFetchSize(1000);
                try (ResultSet rs = ps.executeQuery()) {
                    // Another statement while the portal is suspended mid-way.
                    readSeries(rs, () -> {
                        try {
                            expectEq(99L, queryLong(c, "SELECT 99"), "query interleaved with the open portal");
                        } catch (SQLException e) {
                            throw new AssertionError("interleaved query failed: " + describe(e));
                        }
                    });
                }
            }
            try (Statement s = c.createStatement()) {
                s.setFetchSize(1000);
                try (ResultSet rs = s.executeQuery(kSeriesSql)) {
                    readSeries(rs, null);
                }
            }
            c.commit();
            c.setAutoCommit(true);
            expectUsable(c);
        }));

        check("large_result_no_fetch_size", () -> withConn(c -> {
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(kSeriesSql)) {
                readSeries(rs, null);
            }
            expectUsable(c);
        }));

        check("large_bytea_20mb", () -> withConn(c -> {
            byte[] blob = new byte[20 * 1024 * 1024];
            new Random(42).nextBytes(blob);
            String md5 = HexFormat.of().formatHex(MessageDigest.getInstance("MD5").digest(blob));
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t("blobs") + " (id, b) VALUES (1, ?)")) {
                ps.setBytes(1, blob);
                expectEq(1, ps.executeUpdate(), "insert count");
            }
            expectEq(md5, queryString(c, "SELECT md5(b) FROM " + t("blobs") + " WHERE id = 1"), "server-side md5");
            try (PreparedStatement ps = c.prepareStatement("SELECT b FROM " + t("blobs") + " WHERE id = ?")) {
                ps.setInt(1, 1);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next(), "row");
                    byte[] back = rs.getBytes(1);
                    expectEq(blob.length, back.length, "bytea length");
                    expect(Arrays.equals(blob, back), "bytea content differs");
                }
            }
            expectUsable(c);
        }));

        check("large_text_20mb", () -> withConn(c -> {
            StringBuilder sb = new StringBuilder(20 * 1024 * 1024);
            Random r = new Random(7);
            while (sb.length() < 20 * 1024 * 1024) {
                sb.append((char) ('a' + r.nextInt(26)));
                if (sb.length() % 1000 == 0) {
                    sb.append("\u00e4\n");
                }
            }
            String text = sb.toString();
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t("blobs") + " (id, s) VALUES (2, ?)")) {
                ps.setString(1, text);
                ps.executeUpdate();
            }
            expectEq((long) text.length(),
                    queryLong(c, "SELECT length(s) FROM " + t("blobs") + " WHERE id = 2"), "server-side length");
            String back = queryString(c, "SELECT s FROM " + t("blobs") + " WHERE id = 2");
            expectEq(text.length(), back.length(), "text length");
            expect(text.equals(back), "text content differs");
            expectUsable(c);
        }));
    }

    // ---------------------------------------------------------------- Describe, metadata, schema

    private void checkDescribeAndSchema() {
        check("parameter_metadata", () -> withConn(c -> {
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, v FROM " + t("items") + " WHERE id = ? AND v <> ? AND ? < now()")) {
                ParameterMetaData pmd = ps.getParameterMetaData();
                expectEq(3, pmd.getParameterCount(), "parameter count");
                expectEq(Types.INTEGER, pmd.getParameterType(1), "type of parameter 1");
                expectEq(Types.VARCHAR, pmd.getParameterType(2), "type of parameter 2");
                expectEq("timestamptz", pmd.getParameterTypeName(3), "type name of parameter 3");
            }
        }));

        check("resultset_metadata", () -> withConn(c -> {
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, v, id::numeric(10,2) AS n, now() AS ts FROM " + t("items") + " WHERE id = ?")) {
                ResultSetMetaData md = ps.getMetaData();   // Describe before any Execute
                expect(md != null, "metadata before execution is null");
                expectEq(4, md.getColumnCount(), "column count");
                expectEq("id", md.getColumnName(1), "column 1 name");
                expectEq(Types.INTEGER, md.getColumnType(1), "column 1 type");
                expectEq(Types.VARCHAR, md.getColumnType(2), "column 2 type");
                expectEq(Types.NUMERIC, md.getColumnType(3), "column 3 type");
                expectEq(2, md.getScale(3), "column 3 scale");
                expectEq(Types.TIMESTAMP, md.getColumnType(4), "column 4 type");
                expectEq(bare("items"), md.getTableName(1), "base table of column 1");
                expectEq(ResultSetMetaData.columnNoNulls, md.isNullable(2), "nullability of column 2");
                ps.setInt(1, 3);
                try (ResultSet rs = ps.executeQuery()) {
                    expectEq(4, rs.getMetaData().getColumnCount(), "column count after execution");
                }
            }
        }));

        check("database_metadata", () -> withConn(c -> {
            DatabaseMetaData dmd = c.getMetaData();
            expect(dmd.getDatabaseProductVersion() != null, "product version");
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = dmd.getTables(null, schema, "%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    tables.add(rs.getString("TABLE_NAME"));
                }
            }
            expect(tables.containsAll(kTables.subList(0, 6).stream().map(this::bare).toList()),
                    "tables listed: " + tables);
            List<String> cols = new ArrayList<>();
            try (ResultSet rs = dmd.getColumns(null, schema, bare("items"), "%")) {
                while (rs.next()) {
                    cols.add(rs.getString("COLUMN_NAME"));
                }
            }
            expectEq(List.of("id", "v"), cols, "columns of items");
            try (ResultSet rs = dmd.getPrimaryKeys(null, schema, bare("items"))) {
                expect(rs.next() && "id".equals(rs.getString("COLUMN_NAME")), "primary key of items");
            }
        }));

        check("set_get_schema", () -> withConn(c -> {
            String before = c.getSchema();
            c.setSchema(schema);
            expectEq(schema, c.getSchema(), "getSchema after setSchema");
            exec(c, "CREATE TABLE " + bare("unqualified") + " (x int)");
            expectEq(schema, queryString(c,
                    "SELECT schemaname FROM pg_tables WHERE tablename = '" + bare("unqualified")
                            + "' AND schemaname = '" + schema + "'"), "schema of an unqualified CREATE");
            expectEq(20L, queryLong(c, "SELECT count(*) FROM " + bare("items")), "unqualified read from the schema");
            c.setSchema(before);
            expectEq(before, c.getSchema(), "schema restored");
        }));

        check("current_schema_startup_parameter", () -> {
            // currentSchema is sent as search_path in the StartupMessage.
            try (Connection c = connect(props("currentSchema", schema))) {
                expectEq(schema, c.getSchema(), "getSchema from startup search_path");
                expectEq(20L, queryLong(c, "SELECT count(*) FROM " + bare("items")), "unqualified read");
            }
        });
    }

    // ---------------------------------------------------------------- session behaviour

    private void checkSessionBehaviour() {
        check("application_name_and_parameter_status", () -> {
            String app = "jdbcsuite-" + suffix;
            try (Connection c = connect(props("ApplicationName", app))) {
                expectEq(app, queryString(c, "SHOW application_name"), "application_name from startup");
                expectEq(app, c.getClientInfo("ApplicationName"), "client info from startup");
                c.setClientInfo("ApplicationName", app + "-2");
                expectEq(app + "-2", queryString(c, "SHOW application_name"), "application_name after setClientInfo");
                // The driver tracks it through ParameterStatus messages.
                exec(c, "SET application_name = '" + app + "-3'");
                expectEq(app + "-3", c.getClientInfo("ApplicationName"), "ParameterStatus after SET");
                expectEq("UTF8", queryString(c, "SHOW client_encoding"), "client_encoding");
            }
        });

        check("multiple_result_sets", () -> withConn(c -> {
            try (Statement s = c.createStatement()) {
                expect(s.execute("SELECT 1; SELECT 2, 3; UPDATE " + t("items") + " SET v = v WHERE id <= 4; SELECT 4"),
                        "first result is a result set");
                try (ResultSet rs = s.getResultSet()) {
                    expect(rs.next() && rs.getInt(1) == 1, "first result");
                }
                expect(s.getMoreResults(), "second result is a result set");
                try (ResultSet rs = s.getResultSet()) {
                    expect(rs.next() && rs.getInt(2) == 3, "second result");
                }
                expect(!s.getMoreResults(), "third result is an update count");
                expectEq(4, s.getUpdateCount(), "update count");
                expect(s.getMoreResults(), "fourth result is a result set");
                try (ResultSet rs = s.getResultSet()) {
                    expect(rs.next() && rs.getInt(1) == 4, "fourth result");
                }
                expect(!s.getMoreResults() && s.getUpdateCount() == -1, "no further results");
            }
        }));

        check("session_state_not_leaked", () -> {
            // What one connection sets must not show up in the next one. Temp tables are looked
            // for in this session's own temp schema: another backend's (a previous session that
            // is still being cleaned up) is not a leak into this one.
            String defaultTimeout;
            try (Connection c = connect()) {
                defaultTimeout = queryString(c, "SHOW statement_timeout");
            }
            for (int i = 0; i < 5; i++) {
                try (Connection c = connect()) {
                    expectEq(defaultTimeout, queryString(c, "SHOW statement_timeout"),
                            "statement_timeout at connect #" + i);
                    expectEq(0L, queryLong(c, "SELECT count(*) FROM pg_listening_channels()"),
                            "listening channels at connect #" + i);
                    expectEq(0L, queryLong(c,
                            "SELECT count(*) FROM pg_class WHERE relname = 'leak_probe' AND relnamespace = pg_my_temp_schema()"),
                            "temporary table at connect #" + i);
                    expectEq(0L, queryLong(c, "SELECT count(*) FROM pg_prepared_statements"),
                            "prepared statements at connect #" + i);
                    exec(c, "SET statement_timeout = '1234ms'");
                    exec(c, "LISTEN leak_probe_" + suffix);
                    exec(c, "CREATE TEMP TABLE leak_probe (x int)");
                    exec(c, "PREPARE leak_probe AS SELECT 1");
                }
            }
        });

        check("many_concurrent_connections", () -> {
            // 20 sessions open at once, each with its own backend and its own state.
            List<Connection> conns = new ArrayList<>();
            try {
                for (int i = 0; i < 20; i++) {
                    Connection c = connect();
                    conns.add(c);
                    exec(c, "SET application_name = 'jdbcsuite-many-" + i + "'");
                }
                java.util.Set<Long> pids = new java.util.HashSet<>();
                for (int i = 0; i < conns.size(); i++) {
                    Connection c = conns.get(i);
                    expectEq("jdbcsuite-many-" + i, queryString(c, "SHOW application_name"), "state of session " + i);
                    pids.add(queryLong(c, "SELECT pg_backend_pid()"));
                }
                expectEq(20, pids.size(), "distinct backends");
            } finally {
                for (Connection c : conns) {
                    c.close();
                }
            }
        });
    }
}
