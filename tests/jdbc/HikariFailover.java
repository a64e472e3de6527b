// HikariFailover — what a Java application server sees of a failover: a HikariCP pool over pgJDBC,
// connections in their own schema (HikariCP's `schema`, which calls pgJDBC's setSchema once per
// physical connection, so a session that loses its search_path shows), every statement
// server-prepared (prepareThreshold=1), several threads running short write transactions into a
// ledger with unique ids and reads, for a given time. Whoever runs it kills the primary meanwhile:
// it waits for --ready-file to appear (the pool is warm and commits flow), kills, then creates
// --kill-file. This program only keeps running and records what the clients saw:
//
//   javac -cp /usr/share/java/HikariCP.jar:/usr/share/java/postgresql.jar -d OUTDIR tests/jdbc/HikariFailover.java
//   java -cp OUTDIR:/usr/share/java/HikariCP.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar:/usr/share/java/postgresql.jar \
//     HikariFailover --url <jdbc-url> --user U --password P [--threads 6] [--pool 8] [--duration 15]
//                    [--after-kill 6] [--ready-file F] [--kill-file F] [--schema NAME]
//
// Per transaction it records: committed, or failed with SQLSTATE and phase (connect: the pool
// gave no connection; transaction: a statement failed; commit: the COMMIT failed, outcome
// unknown). Physical connections are counted where pgJDBC makes them (a DataSource of ours that
// HikariCP calls) and where HikariCP closes them before shutdown (its evictions). After the run
// every pooled connection is checked out at once: its schema must be intact and a statement it
// prepared before must still run. Then every committed id is looked up on the (new) primary.
// HikariCP logs through slf4j; with slf4j-nop on the class path it is silent (its evictions are
// counted here instead). Prints a JSON summary (one key per line) and exits 0 unless its own checks fail: setup, schema
// or prepared-statement checks, a committed id missing, or an id that failed before its COMMIT
// present (the last two need a synchronous standby to hold across a failover). Errors are
// expected around the kill and only counted.

import java.lang.reflect.InvocationHandler;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import javax.sql.DataSource;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;

import org.postgresql.PGConnection;
import org.postgresql.ds.PGSimpleDataSource;

public final class HikariFailover {
    private static final String kInsert = "INSERT INTO ledger (id, thread, note) VALUES (?, ?, ?)";
    private static final String kBump = "UPDATE counters SET n = n + 1 WHERE thread = ?";
    private static final String kRead = "SELECT current_schema(), count(*) FROM ledger WHERE thread = ?";
    private static final int kMaxSamples = 12;

    // ---------------------------------------------------------------- options

    private String url;
    private String user;
    private String password;
    private String schema = "hikari_failover";
    private int threads = 6;
    private int poolSize = 8;
    private long durationMs = 15_000;
    private long afterKillMs = 6_000;
    private Path readyFile;
    private Path killFile;

    // ---------------------------------------------------------------- what happened

    private final long startNanos = System.nanoTime();
    private volatile long killSeenNanos = 0;  // 0 until --kill-file appears
    private final AtomicLong committedAfterKill = new AtomicLong();
    private final AtomicLong reads = new AtomicLong();
    private final AtomicLong readMismatches = new AtomicLong();
    private final AtomicLong schemaChecks = new AtomicLong();
    private final AtomicLong schemaFailures = new AtomicLong();
    private final Set<Long> committed = ConcurrentHashMap.newKeySet();
    private final Set<Long> failedBeforeCommit = ConcurrentHashMap.newKeySet();
    private final Set<Long> unknownOutcome = ConcurrentHashMap.newKeySet();
    private final Map<String, Integer> errorsBySqlState = new TreeMap<>();
    private final Map<String, Integer> errorsByPhase = new TreeMap<>();
    private final Map<String, Integer> errorsByPhaseAndSqlState = new TreeMap<>();  // "commit 08007"
    private int errorsBeforeKill = 0;
    private int failedInFlight = 0;        // the transaction started before the kill was seen
    private int failedStartedAfterKill = 0; // started on a connection taken after the kill was seen
    private final List<String> samples = new ArrayList<>();
    private final List<String> checkFailures = new ArrayList<>();

    // Physical connections, as pgJDBC makes them and HikariCP closes them.
    private final AtomicInteger created = new AtomicInteger();
    private final AtomicInteger createdAfterKill = new AtomicInteger();
    private final AtomicInteger closed = new AtomicInteger();
    private final AtomicInteger failedValidations = new AtomicInteger();
    private volatile boolean shuttingDown = false;
    /** Physical connection -> its number (1, 2, ... in creation order) and whether it predates the kill. */
    private final Map<Connection, Integer> numbers = new ConcurrentHashMap<>();
    private final Set<Integer> beforeKill = ConcurrentHashMap.newKeySet();

    public static void main(String[] args) throws Exception {
        HikariFailover run = new HikariFailover();
        try {
            run.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("HikariFailover: " + e.getMessage());
            System.err.println("usage: HikariFailover --url URL --user U --password P [--threads N] [--pool N]"
                    + " [--duration S] [--after-kill S] [--ready-file F] [--kill-file F] [--schema NAME]");
            System.exit(2);
        }
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(run.durationMs + run.afterKillMs + 120_000);
            } catch (InterruptedException e) {
                return;
            }
            System.out.println("HikariFailover: watchdog: giving up");
            System.out.flush();
            Runtime.getRuntime().halt(1);
        }, "watchdog");
        watchdog.setDaemon(true);
        watchdog.start();
        System.exit(run.runAll());
    }

    private void parse(String[] args) {
        for (int i = 0; i < args.length; i++) {
            if (i + 1 >= args.length) {
                throw new IllegalArgumentException(args[i] + " needs a value");
            }
            String v = args[++i];
            switch (args[i - 1]) {
                case "--url" -> url = v;
                case "--user" -> user = v;
                case "--password" -> password = v;
                case "--schema" -> schema = v;
                case "--threads" -> threads = Integer.parseInt(v);
                case "--pool" -> poolSize = Integer.parseInt(v);
                case "--duration" -> durationMs = Long.parseLong(v) * 1000;
                case "--after-kill" -> afterKillMs = Long.parseLong(v) * 1000;
                case "--ready-file" -> readyFile = Path.of(v);
                case "--kill-file" -> killFile = Path.of(v);
                default -> throw new IllegalArgumentException("unknown option " + args[i - 1]);
            }
        }
        if (url == null || user == null || password == null) {
            throw new IllegalArgumentException("--url, --user and --password are required");
        }
        if (!schema.matches("[a-z_][a-z0-9_]*")) {
            throw new IllegalArgumentException("--schema must be a plain lower-case identifier");
        }
    }

    private int runAll() throws Exception {
        setup();
        try (HikariDataSource pool = new HikariDataSource(poolConfig())) {
            List<Thread> workers = new ArrayList<>();
            for (int t = 0; t < threads; t++) {
                final int thread = t + 1;
                Thread w = new Thread(() -> work(pool, thread), "worker-" + thread);
                workers.add(w);
                w.start();
            }
            waitForWarmPool(pool);
            for (Thread w : workers) {
                w.join();
            }
            finalChecks(pool);
            shuttingDown = true;
        }
        printSummary();
        return checkFailures.isEmpty() ? 0 : 1;
    }

    /** The schema, its tables and one counter row per thread, over a connection of its own. */
    private void setup() throws SQLException {
        try (Connection c = DriverManager.getConnection(url, user, password); Statement s = c.createStatement()) {
            s.execute("CREATE SCHEMA IF NOT EXISTS " + schema);
            s.execute("DROP TABLE IF EXISTS " + schema + ".ledger, " + schema + ".counters");
            s.execute("CREATE TABLE " + schema + ".ledger (id bigint PRIMARY KEY, thread int NOT NULL,"
                    + " note text NOT NULL, at timestamptz NOT NULL DEFAULT now())");
            s.execute("CREATE TABLE " + schema + ".counters (thread int PRIMARY KEY, n bigint NOT NULL)");
            s.execute("INSERT INTO " + schema + ".counters SELECT g, 0 FROM generate_series(1, " + threads + ") g");
        }
    }

    private HikariConfig poolConfig() {
        HikariConfig config = new HikariConfig();
        config.setPoolName("hikari-failover");
        config.setDataSource(countingDataSource());
        config.setSchema(schema);
        config.setAutoCommit(false);
        // With autocommit off, HikariCP's setSchema() runs inside the connection's first
        // transaction, and a rollback of that transaction undoes it (PostgreSQL's rule for SET).
        // Isolated internal queries make HikariCP commit its set-up (after connectionInitSql), so
        // the schema holds however the application's first transaction ends.
        config.setIsolateInternalQueries(true);
        config.setConnectionInitSql("SELECT 1");
        config.setMaximumPoolSize(poolSize);
        config.setMinimumIdle(poolSize);        // a fixed pool: every new connection is a replacement
        config.setConnectionTimeout(10_000);
        config.setValidationTimeout(2_000);
        config.setMaxLifetime(30 * 60_000);
        config.setInitializationFailTimeout(10_000);
        return config;
    }

    /** pgJDBC's DataSource, counting the physical connections HikariCP asks for and closes. */
    private DataSource countingDataSource() {
        PGSimpleDataSource pg = new PGSimpleDataSource() {
            // getConnection() calls this one with the configured user and password.
            @Override
            public Connection getConnection(String u, String p) throws SQLException {
                return counted(super.getConnection(u, p));
            }
        };
        pg.setURL(url);
        pg.setUser(user);
        pg.setPassword(password);
        pg.setPrepareThreshold(1);
        pg.setSocketTimeout(30);
        pg.setConnectTimeout(10);
        pg.setApplicationName("hikari-failover");
        return pg;
    }

    private Connection counted(Connection physical) {
        int number = created.incrementAndGet();
        if (killSeenNanos != 0) {
            createdAfterKill.incrementAndGet();
        } else {
            beforeKill.add(number);
        }
        InvocationHandler handler = (proxy, method, margs) -> {
            // Identity, so the wrapper can be looked up in `numbers` (pgJDBC compares its own).
            if (method.getName().equals("equals") && margs != null && margs.length == 1) {
                return proxy == margs[0];
            }
            if (method.getName().equals("hashCode") && margs == null) {
                return System.identityHashCode(proxy);
            }
            try {
                Object result = method.invoke(physical, margs);
                if (method.getName().equals("isValid") && Boolean.FALSE.equals(result)) {
                    failedValidations.incrementAndGet();
                }
                return result;
            } catch (InvocationTargetException e) {
                throw e.getCause();
            } finally {
                if (method.getName().equals("close") && !shuttingDown) {
                    closed.incrementAndGet();
                }
            }
        };
        Connection wrapped = (Connection) Proxy.newProxyInstance(HikariFailover.class.getClassLoader(),
                new Class<?>[] {Connection.class, PGConnection.class}, handler);
        numbers.put(wrapped, number);
        return wrapped;
    }

    // ---------------------------------------------------------------- the load

    private void waitForWarmPool(HikariDataSource pool) throws Exception {
        long deadline = System.nanoTime() + 20_000_000_000L;
        while (System.nanoTime() < deadline
                && (committed.size() < 50 || pool.getHikariPoolMXBean().getTotalConnections() < poolSize)) {
            Thread.sleep(20);
        }
        if (readyFile != null) {
            Files.writeString(readyFile, "ready\n");
        }
    }

    private boolean running() {
        long now = System.nanoTime();
        if (killSeenNanos == 0 && killFile != null && Files.exists(killFile)) {
            synchronized (this) {
                if (killSeenNanos == 0) {
                    killSeenNanos = now;
                }
            }
        }
        long elapsedMs = (now - startNanos) / 1_000_000;
        if (killFile != null && killSeenNanos == 0) {
            return elapsedMs < durationMs + 60_000;  // the kill is late: wait for it, not forever
        }
        long sinceKillMs = killSeenNanos == 0 ? Long.MAX_VALUE : (now - killSeenNanos) / 1_000_000;
        return elapsedMs < durationMs || sinceKillMs < afterKillMs;
    }

    private void work(HikariDataSource pool, int thread) {
        long seq = 0;
        long mine = 0;        // committed by this thread
        long mineUnknown = 0; // COMMITs of this thread whose outcome is unknown
        while (running()) {
            boolean write = seq % 3 != 2;
            long id = thread * 1_000_000_000L + (++seq);
            long started = System.nanoTime();
            boolean startedAfterKill = killSeenNanos != 0;
            String phase = "connect";
            try (Connection c = pool.getConnection()) {
                phase = "transaction";
                if (write) {
                    try (PreparedStatement ins = c.prepareStatement(kInsert);
                         PreparedStatement bump = c.prepareStatement(kBump)) {
                        ins.setLong(1, id);
                        ins.setInt(2, thread);
                        ins.setString(3, "t" + thread + " #" + seq);
                        ins.executeUpdate();
                        bump.setInt(1, thread);
                        bump.executeUpdate();
                    }
                    phase = "commit";
                    c.commit();
                    committed.add(id);
                    mine++;
                    if (killSeenNanos != 0) {
                        committedAfterKill.incrementAndGet();
                    }
                } else {
                    try (PreparedStatement read = c.prepareStatement(kRead)) {
                        read.setInt(1, thread);
                        try (ResultSet rs = read.executeQuery()) {
                            rs.next();
                            checkSchema(rs.getString(1), "read");
                            long n = rs.getLong(2);
                            if (n < mine || n > mine + mineUnknown) {
                                readMismatches.incrementAndGet();
                                sample("read: thread " + thread + " sees " + n + " rows, committed " + mine
                                        + " (+" + mineUnknown + " unknown)");
                            }
                        }
                    }
                    c.commit();
                    reads.incrementAndGet();
                }
            } catch (SQLException e) {
                if (write) {
                    if (phase.equals("commit")) {
                        unknownOutcome.add(id);
                        mineUnknown++;
                    } else {
                        failedBeforeCommit.add(id);
                    }
                }
                recordError(e, phase, started, startedAfterKill);
            }
            pause(5 + (seq * 7 + thread) % 20);  // think time: most connections are idle in the pool
        }
    }

    private void checkSchema(String seen, String where) {
        schemaChecks.incrementAndGet();
        if (!schema.equals(seen)) {
            schemaFailures.incrementAndGet();
            sample("schema (" + where + "): current_schema() is " + seen + ", not " + schema);
        }
    }

    private synchronized void recordError(SQLException e, String phase, long started, boolean startedAfterKill) {
        String state = e.getSQLState() == null ? "none" : e.getSQLState();
        errorsBySqlState.merge(state, 1, Integer::sum);
        errorsByPhase.merge(phase, 1, Integer::sum);
        errorsByPhaseAndSqlState.merge(phase + " " + state, 1, Integer::sum);
        if (killSeenNanos == 0) {
            errorsBeforeKill++;
        } else if (startedAfterKill) {
            failedStartedAfterKill++;
        } else {
            failedInFlight++;
        }
        long atMs = (started - startNanos) / 1_000_000;
        String kill = killSeenNanos == 0 ? "before kill" : String.format("kill%+dms", (started - killSeenNanos) / 1_000_000);
        sample(state + " " + phase + " (started at " + atMs + "ms, " + kill + "): " + e.getMessage());
    }

    private synchronized void sample(String line) {
        if (samples.size() < kMaxSamples) {
            String oneLine = line.replaceAll("\\s+", " ").trim();
            samples.add(oneLine.length() > 240 ? oneLine.substring(0, 240) + " ..." : oneLine);
        }
    }

    private static void pause(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    // ---------------------------------------------------------------- after the run

    private int finalConnections = 0;
    private int finalOk = 0;
    private int finalSurvivors = 0;
    private int missingCommits = -1;
    private int phantomIds = -1;

    /**
     * Every pooled connection at once: the schema set when it was made, and a statement it has
     * run before (pgJDBC's prepared S_n on a connection that survived). Then the ledger.
     */
    private void finalChecks(HikariDataSource pool) {
        List<Connection> held = new ArrayList<>();
        try {
            for (int i = 0; i < poolSize; i++) {
                held.add(pool.getConnection());
            }
            for (Connection c : held) {
                finalConnections++;
                Connection physical = c.unwrap(Connection.class);
                Integer number = numbers.get(physical);
                boolean survivor = number != null && beforeKill.contains(number) && killSeenNanos != 0;
                if (survivor) {
                    finalSurvivors++;
                }
                try (PreparedStatement read = c.prepareStatement(kRead)) {
                    read.setInt(1, 1);
                    try (ResultSet rs = read.executeQuery()) {
                        rs.next();
                        checkSchema(rs.getString(1), "final");
                        if (schema.equals(rs.getString(1))) {
                            finalOk++;
                        }
                    }
                    c.commit();
                } catch (SQLException e) {
                    checkFailures.add("final check on connection #" + number + (survivor ? " (from before the kill)" : "")
                            + ": " + e.getSQLState() + " " + e.getMessage());
                }
            }
        } catch (SQLException e) {
            checkFailures.add("final check: no connection from the pool: " + e.getSQLState() + " " + e.getMessage());
        } finally {
            for (Connection c : held) {
                try {
                    c.close();
                } catch (SQLException ignored) {
                    // counted as an eviction if HikariCP closes it
                }
            }
        }
        if (schemaFailures.get() > 0) {
            checkFailures.add(schemaFailures.get() + " schema check(s) failed");
        }
        try (Connection c = pool.getConnection(); Statement s = c.createStatement()) {
            Set<Long> present = new HashSet<>();
            try (ResultSet rs = s.executeQuery("SELECT id FROM ledger")) {
                while (rs.next()) {
                    present.add(rs.getLong(1));
                }
            }
            c.commit();
            missingCommits = 0;
            for (long id : committed) {
                if (!present.contains(id)) {
                    missingCommits++;
                }
            }
            phantomIds = 0;
            for (long id : failedBeforeCommit) {
                if (present.contains(id)) {
                    phantomIds++;
                }
            }
        } catch (SQLException e) {
            checkFailures.add("ledger read: " + e.getSQLState() + " " + e.getMessage());
        }
        if (missingCommits > 0) {
            checkFailures.add(missingCommits + " committed id(s) missing");
        }
        if (phantomIds > 0) {
            checkFailures.add(phantomIds + " id(s) that failed before COMMIT are present");
        }
    }

    private synchronized void printSummary() {
        Map<String, Integer> byClass = new TreeMap<>();
        errorsBySqlState.forEach((state, n) -> byClass.merge(state.length() >= 2 ? state.substring(0, 2) : state, n,
                Integer::sum));
        int errors = errorsBySqlState.values().stream().mapToInt(Integer::intValue).sum();
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("kill_seen", killSeenNanos != 0);
        out.put("kill_seen_at_ms", killSeenNanos == 0 ? -1 : (killSeenNanos - startNanos) / 1_000_000);
        out.put("ran_ms", (System.nanoTime() - startNanos) / 1_000_000);
        out.put("threads", threads);
        out.put("pool_size", poolSize);
        out.put("committed", committed.size());
        out.put("committed_after_kill", committedAfterKill.get());
        out.put("reads", reads.get());
        out.put("read_mismatches", readMismatches.get());
        out.put("errors", errors);
        out.put("errors_before_kill", errorsBeforeKill);
        out.put("failed_in_flight", failedInFlight);
        out.put("failed_started_after_kill", failedStartedAfterKill);
        out.put("errors_by_class", byClass);
        out.put("errors_by_sqlstate", errorsBySqlState);
        out.put("errors_by_phase", errorsByPhase);
        out.put("errors_by_phase_and_sqlstate", errorsByPhaseAndSqlState);
        out.put("unknown_outcome", unknownOutcome.size());
        out.put("failed_before_commit", failedBeforeCommit.size());
        out.put("missing_commits", missingCommits);
        out.put("phantom_ids", phantomIds);
        out.put("connections_created", created.get());
        out.put("connections_created_after_kill", createdAfterKill.get());
        out.put("evictions", closed.get());
        out.put("failed_validations", failedValidations.get());
        out.put("schema_checks", schemaChecks.get());
        out.put("schema_failures", schemaFailures.get());
        out.put("final_connections", finalConnections);
        out.put("final_ok", finalOk);
        out.put("final_survivors", finalSurvivors);
        out.put("check_failures", checkFailures);
        out.put("samples", samples);
        StringBuilder sb = new StringBuilder("{\n");
        int i = 0;
        for (Map.Entry<String, Object> e : out.entrySet()) {
            sb.append("  ").append(json(e.getKey())).append(": ").append(json(e.getValue()));
            sb.append(++i < out.size() ? ",\n" : "\n");
        }
        sb.append("}");
        System.out.println(sb);
        System.out.flush();
    }

    private static String json(Object v) {
        if (v instanceof String s) {
            StringBuilder sb = new StringBuilder("\"");
            for (char ch : s.toCharArray()) {
                switch (ch) {
                    case '"' -> sb.append("\\\"");
                    case '\\' -> sb.append("\\\\");
                    case '\n' -> sb.append("\\n");
                    default -> {
                        if (ch < 0x20) {
                            sb.append(String.format("\\u%04x", (int) ch));
                        } else {
                            sb.append(ch);
                        }
                    }
                }
            }
            return sb.append('"').toString();
        }
        if (v instanceof Map<?, ?> m) {
            List<String> parts = new ArrayList<>();
            m.forEach((k, x) -> parts.add(json(String.valueOf(k)) + ": " + json(x)));
            return "{" + String.join(", ", parts) + "}";
        }
        if (v instanceof List<?> l) {
            List<String> parts = new ArrayList<>();
            l.forEach(x -> parts.add(json(x)));
            return "[" + String.join(", ", parts) + "]";
        }
        return String.valueOf(v);
    }
}
