// PreparedMany — pgJDBC from many connections at once, every statement server-prepared, checking
// every result. With prepareThreshold=1 pgJDBC names its statements S_1, S_2, ... per connection
// in the order it first runs them; each connection here runs its statements in a different order,
// so the same name means a different statement (other parameter and result types) on each
// connection. A pooler that lets one client's S_3 meet another's on a shared server connection
// answers with a wrong result, a type error, or "prepared statement ... does not exist / already
// exists"; every one of those is reported. Single file, no build tool:
//
//   javac -cp /usr/share/java/postgresql.jar -d OUTDIR tests/jdbc/PreparedMany.java
//   java -cp OUTDIR:/usr/share/java/postgresql.jar PreparedMany <jdbc-url> <user> <password> [connections] [rounds]
//
// Half of the connections keep pgJDBC's statement cache small, so it closes statements (Close
// message) and prepares them again under new names while the run goes on. Prints one line per
// wrong result or error (the first kMaxReported), then a summary; exits 0 only if there were none.
// Its table has a random suffix and is dropped at the end.

import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HexFormat;
import java.util.List;
import java.util.Objects;
import java.util.Properties;
import java.util.Random;
import java.util.concurrent.atomic.AtomicLong;

public final class PreparedMany {
    private static final long kWatchdogSeconds = Long.getLong("preparedmany.watchdog", 120);
    private static final int kMaxReported = 40;
    private static final int kMaxReason = 300;

    private final String url;
    private final String user;
    private final String password;
    private final String table;
    private final AtomicLong executions = new AtomicLong();
    private final AtomicLong transactions = new AtomicLong();
    private int wrong = 0;
    private int errors = 0;
    private int reported = 0;

    /** One kind of statement: its SQL and how to run it once and check the answer. */
    @FunctionalInterface
    interface Check { void run(Connection c, PreparedStatement ps, int client, int round) throws Exception; }

    record Kind(String name, String sql, Check check) {}

    private PreparedMany(String url, String user, String password) {
        this.url = url;
        this.user = user;
        this.password = password;
        this.table = "prepared_many_" + HexFormat.of().formatHex(SecureRandom.getSeed(4));
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 3 || args.length > 5) {
            System.err.println("usage: PreparedMany <jdbc-url> <user> <password> [connections] [rounds]");
            System.exit(2);
        }
        int connections = args.length > 3 ? Integer.parseInt(args[3]) : 16;
        int rounds = args.length > 4 ? Integer.parseInt(args[4]) : 40;
        PreparedMany run = new PreparedMany(args[0], args[1], args[2]);
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(kWatchdogSeconds * 1000);
            } catch (InterruptedException e) {
                return;
            }
            System.out.println("FAIL watchdog: run exceeded " + kWatchdogSeconds + " s; giving up");
            System.out.flush();
            Runtime.getRuntime().halt(1);
        }, "watchdog");
        watchdog.setDaemon(true);
        watchdog.start();
        System.exit(run.runAll(connections, rounds));
    }

    private int runAll(int connections, int rounds) throws Exception {
        try (Connection c = connect(false, 0); Statement s = c.createStatement()) {
            s.execute("CREATE TABLE " + table + " (id bigint PRIMARY KEY, client int NOT NULL, v text NOT NULL)");
        }
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < connections; i++) {
            final int client = i;
            Thread t = new Thread(() -> runClient(client, rounds), "client-" + i);
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join();
        }
        long rows = -1;
        try (Connection c = connect(false, 0); Statement s = c.createStatement()) {
            try (ResultSet rs = s.executeQuery("SELECT count(*) FROM " + table)) {
                rs.next();
                rows = rs.getLong(1);
            }
            s.execute("DROP TABLE " + table);
        }
        // Every round commits one row per client and rolls one back.
        if (rows != (long) connections * rounds) {
            wrong("table", "expected " + (long) connections * rounds + " rows, found " + rows);
        }
        synchronized (this) {
            System.out.println("PreparedMany: " + connections + " connections, " + rounds + " rounds, "
                    + executions.get() + " executions, " + transactions.get() + " transactions, "
                    + wrong + " wrong results, " + errors + " errors");
            System.out.flush();
            return wrong == 0 && errors == 0 ? 0 : 1;
        }
    }

    private Connection connect(boolean smallCache, int client) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("prepareThreshold", "1");      // server-prepared (named S_n) from the first run
        p.setProperty("socketTimeout", "60");
        p.setProperty("connectTimeout", "10");
        p.setProperty("ApplicationName", "preparedmany-" + client);
        if (smallCache) {
            p.setProperty("preparedStatementCacheQueries", "3");  // evicted: Close, then a new S_n
        }
        return DriverManager.getConnection(url, p);
    }

    private List<Kind> kinds() {
        List<Kind> k = new ArrayList<>();
        k.add(new Kind("add", "SELECT ?::int + ?::int", (c, ps, client, round) -> {
            ps.setInt(1, client);
            ps.setInt(2, round * 1000);
            expectEq(client + round * 1000, scalarInt(ps), "add");
        }));
        k.add(new Kind("concat", "SELECT upper(?::text) || '/' || ?::int", (c, ps, client, round) -> {
            ps.setString(1, "c" + client);
            ps.setInt(2, round);
            expectEq("C" + client + "/" + round, scalarString(ps), "concat");
        }));
        k.add(new Kind("two-columns", "SELECT ?::bigint * 3 AS big, ?::text AS t", (c, ps, client, round) -> {
            ps.setLong(1, 10_000_000_000L + client);
            ps.setString(2, "r" + round);
            try (ResultSet rs = ps.executeQuery()) {
                expect(rs.next(), "two-columns: no row");
                expectEq(3 * (10_000_000_000L + client), rs.getLong(1), "two-columns big");
                expectEq("r" + round, rs.getString(2), "two-columns t");
                expectEq(2, rs.getMetaData().getColumnCount(), "two-columns width");
            }
        }));
        k.add(new Kind("series", "SELECT count(*), sum(g) FROM generate_series(1, ?) g", (c, ps, client, round) -> {
            int n = 1 + (client * 7 + round) % 50;
            ps.setInt(1, n);
            try (ResultSet rs = ps.executeQuery()) {
                expect(rs.next(), "series: no row");
                expectEq((long) n, rs.getLong(1), "series count");
                expectEq((long) n * (n + 1) / 2, rs.getLong(2), "series sum");
            }
        }));
        k.add(new Kind("numeric", "SELECT ?::numeric(12,2) / 4", (c, ps, client, round) -> {
            BigDecimal x = new BigDecimal(client * 100 + round).setScale(2);
            ps.setBigDecimal(1, x);
            try (ResultSet rs = ps.executeQuery()) {
                expect(rs.next(), "numeric: no row");
                expectEq(0, x.divide(BigDecimal.valueOf(4)).compareTo(rs.getBigDecimal(1)), "numeric " + x + "/4 = "
                        + rs.getBigDecimal(1));
            }
        }));
        k.add(new Kind("md5", "SELECT md5(?)", (c, ps, client, round) -> {
            String in = "client " + client + " round " + round;
            ps.setString(1, in);
            byte[] d = MessageDigest.getInstance("MD5").digest(in.getBytes(StandardCharsets.UTF_8));
            expectEq(HexFormat.of().formatHex(d), scalarString(ps), "md5");
        }));
        k.add(new Kind("array", "SELECT array_length(?::int[], 1), ?::text[]", (c, ps, client, round) -> {
            Integer[] ints = new Integer[1 + client % 5];
            for (int i = 0; i < ints.length; i++) {
                ints[i] = i * round;
            }
            ps.setArray(1, c.createArrayOf("int4", ints));
            ps.setArray(2, c.createArrayOf("text", new String[] {"a" + client, "b" + round}));
            try (ResultSet rs = ps.executeQuery()) {
                expect(rs.next(), "array: no row");
                expectEq(ints.length, rs.getInt(1), "array length");
                String[] texts = (String[]) rs.getArray(2).getArray();
                expectEq("a" + client + "," + "b" + round, String.join(",", texts), "array text");
            }
        }));
        k.add(new Kind("bool-null", "SELECT ?::int IS NULL, coalesce(?::text, 'none')", (c, ps, client, round) -> {
            boolean isNull = (client + round) % 2 == 0;
            if (isNull) {
                ps.setNull(1, java.sql.Types.INTEGER);
                ps.setNull(2, java.sql.Types.VARCHAR);
            } else {
                ps.setInt(1, round);
                ps.setString(2, "x" + client);
            }
            try (ResultSet rs = ps.executeQuery()) {
                expect(rs.next(), "bool-null: no row");
                expectEq(isNull, rs.getBoolean(1), "bool-null flag");
                expectEq(isNull ? "none" : "x" + client, rs.getString(2), "bool-null text");
            }
        }));
        return k;
    }

    private void runClient(int client, int rounds) {
        Random random = new Random(client * 7919L + 17);
        List<Kind> kinds = kinds();
        // A different first-use order per connection: S_1 ... S_n mean different statements.
        Collections.shuffle(kinds, random);
        boolean smallCache = client % 2 == 1;
        try (Connection c = connect(smallCache, client)) {
            // Written statements, prepared in the middle of the run on some connections.
            String insert = "INSERT INTO " + table + " (id, client, v) VALUES (?, ?, ?)";
            String select = "SELECT client, v FROM " + table + " WHERE id = ?";
            String update = "UPDATE " + table + " SET v = v || ? WHERE id = ? AND client = ?";
            List<PreparedStatement> held = new ArrayList<>();
            if (!smallCache) {
                // Kept open for the whole run: the same names, executed again and again.
                for (Kind k : kinds) {
                    held.add(c.prepareStatement(k.sql()));
                }
            }
            for (int round = 0; round < rounds; round++) {
                for (int i = 0; i < kinds.size(); i++) {
                    Kind k = kinds.get((i + round) % kinds.size());
                    try {
                        if (smallCache) {
                            try (PreparedStatement ps = c.prepareStatement(k.sql())) {
                                k.check().run(c, ps, client, round);
                            }
                        } else {
                            k.check().run(c, held.get((i + round) % kinds.size()), client, round);
                        }
                        executions.incrementAndGet();
                    } catch (AssertionError e) {
                        wrong("client " + client + " round " + round + " " + k.name(), e.getMessage());
                    } catch (Exception e) {
                        error("client " + client + " round " + round + " " + k.name(), e);
                    }
                }
                writeRound(c, client, round, insert, select, update);
            }
            for (PreparedStatement ps : held) {
                ps.close();
            }
        } catch (Exception e) {
            error("client " + client + " connection", e);
        }
    }

    /** One committed transaction (insert, update, read back) and one rolled back. */
    private void writeRound(Connection c, int client, int round, String insert, String select, String update) {
        long id = client * 1_000_000L + round;
        long ghost = -id - 1;
        try {
            c.setAutoCommit(false);
            try (PreparedStatement ins = c.prepareStatement(insert);
                 PreparedStatement upd = c.prepareStatement(update);
                 PreparedStatement sel = c.prepareStatement(select)) {
                ins.setLong(1, id);
                ins.setInt(2, client);
                ins.setString(3, "v" + round);
                expectEq(1, ins.executeUpdate(), "insert count");
                upd.setString(1, "+" + client);
                upd.setLong(2, id);
                upd.setInt(3, client);
                expectEq(1, upd.executeUpdate(), "update count");
                c.commit();
                ins.setLong(1, ghost);
                expectEq(1, ins.executeUpdate(), "ghost insert count");
                c.rollback();
                c.setAutoCommit(true);
                sel.setLong(1, id);
                try (ResultSet rs = sel.executeQuery()) {
                    expect(rs.next(), "select: row " + id + " missing");
                    expectEq(client, rs.getInt(1), "select client");
                    expectEq("v" + round + "+" + client, rs.getString(2), "select v");
                }
                sel.setLong(1, ghost);
                try (ResultSet rs = sel.executeQuery()) {
                    expect(!rs.next(), "select: rolled back row " + ghost + " is there");
                }
            }
            executions.addAndGet(6);
            transactions.addAndGet(2);
        } catch (AssertionError e) {
            wrong("client " + client + " round " + round + " write", e.getMessage());
        } catch (Exception e) {
            error("client " + client + " round " + round + " write", e);
        } finally {
            try {
                if (!c.getAutoCommit()) {
                    c.rollback();
                    c.setAutoCommit(true);
                }
            } catch (SQLException ignored) {
                // the connection is gone; the next statement reports it
            }
        }
    }

    // ---------------------------------------------------------------- plumbing

    private static int scalarInt(PreparedStatement ps) throws SQLException {
        try (ResultSet rs = ps.executeQuery()) {
            expect(rs.next(), "no row");
            return rs.getInt(1);
        }
    }

    private static String scalarString(PreparedStatement ps) throws SQLException {
        try (ResultSet rs = ps.executeQuery()) {
            expect(rs.next(), "no row");
            return rs.getString(1);
        }
    }

    private static void expect(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    private static void expectEq(Object expected, Object actual, String what) {
        if (!Objects.equals(expected, actual)) {
            throw new AssertionError(what + ": expected <" + expected + "> but got <" + actual + ">");
        }
    }

    private synchronized void wrong(String where, String what) {
        wrong++;
        report("WRONG " + where + ": " + what);
    }

    private synchronized void error(String where, Exception e) {
        errors++;
        String state = e instanceof SQLException se && se.getSQLState() != null ? " [" + se.getSQLState() + "]" : "";
        report("ERROR " + where + state + ": " + e.getMessage());
    }

    private void report(String line) {
        if (reported++ < kMaxReported) {
            String oneLine = line.replaceAll("\\s+", " ").trim();
            System.out.println(oneLine.length() > kMaxReason ? oneLine.substring(0, kMaxReason) + " ..." : oneLine);
            System.out.flush();
        }
    }
}
