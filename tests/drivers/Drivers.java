// Drivers.java: pgJDBC (Debian's libpostgresql-jdbc-java) through pgkeel, every result checked.
//
// pgJDBC sends every statement through the extended protocol. A PreparedStatement becomes a named
// server statement (S_1, S_2, ... per connection) once it has run prepareThreshold times (default
// 5; 1: from the first run; 0: never, the unnamed statement every time). The prepared cases run
// with each; LISTEN/NOTIFY (LISTEN sent by the extended protocol, NOTIFY from another connection
// while the listener is idle) and CopyManager in and out run once.
//
//   javac -cp /usr/share/java/postgresql.jar -d CLASSES tests/drivers/Drivers.java
//   PGHOST=127.0.0.1 PGPORT=6432 PGUSER=app PGPASSWORD=app-pass PGDATABASE=app PGSSLMODE=require \
//     java -cp CLASSES:/usr/share/java/postgresql.jar Drivers [--only NAME]
//
// sslmode=require encrypts without checking the certificate (NonValidatingFactory, as libpq's
// require). Prints one line per case, `PASS name` or `FAIL name: reason`, then a summary; exits 1
// if any case failed.
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ThreadLocalRandom;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public final class Drivers {
  interface Case {
    void run() throws Exception;
  }

  private static final String TABLE = "drivers_jdbc_" + Long.toHexString(ThreadLocalRandom.current().nextLong() >>> 16);
  private static final List<String> only = new ArrayList<>();
  private static int passed = 0;
  private static int failed = 0;

  private static String env(String key, String fallback) {
    String v = System.getenv(key);
    return v == null || v.isEmpty() ? fallback : v;
  }

  // prepareThreshold: null for the driver's default.
  static Connection connect(Integer prepareThreshold) throws SQLException {
    String url = "jdbc:postgresql://" + env("PGHOST", "127.0.0.1") + ":" + env("PGPORT", "5432") + "/"
        + env("PGDATABASE", "app");
    Properties p = new Properties();
    p.setProperty("user", env("PGUSER", "app"));
    p.setProperty("password", env("PGPASSWORD", ""));
    p.setProperty("loginTimeout", "10");
    p.setProperty("socketTimeout", "60");  // a case that hangs fails instead
    String sslmode = env("PGSSLMODE", "disable");
    p.setProperty("sslmode", sslmode);
    if (!sslmode.equals("disable")) {
      p.setProperty("ssl", "true");
      p.setProperty("sslfactory", "org.postgresql.ssl.NonValidatingFactory");
    }
    if (prepareThreshold != null) {
      p.setProperty("prepareThreshold", prepareThreshold.toString());
    }
    return DriverManager.getConnection(url, p);
  }

  static void expectEq(Object expected, Object actual, String what) {
    if (expected == null ? actual != null : !expected.equals(actual)) {
      throw new AssertionError(what + ": expected " + expected + ", got " + actual);
    }
  }

  static void repeatPrepared(Integer threshold) throws SQLException {
    try (Connection c = connect(threshold);
        PreparedStatement a = c.prepareStatement("SELECT ?::int + 1, ?::text || 'x'");
        PreparedStatement b = c.prepareStatement("SELECT ?::bigint * 3")) {
      for (int i = 0; i < 12; ++i) {
        a.setInt(1, i);
        a.setString(2, "r" + i);
        try (ResultSet rs = a.executeQuery()) {
          rs.next();
          expectEq(i + 1, rs.getInt(1), "run " + (i + 1));
          expectEq("r" + i + "x", rs.getString(2), "run " + (i + 1));
        }
        b.setLong(1, i);
        try (ResultSet rs = b.executeQuery()) {
          rs.next();
          expectEq(3L * i, rs.getLong(1), "second statement, run " + (i + 1));
        }
      }
    }
  }

  // A new PreparedStatement for the same SQL each time: pgJDBC's statement cache hands back the
  // server statement it prepared before.
  static void reprepareEachTime(Integer threshold) throws SQLException {
    try (Connection c = connect(threshold)) {
      for (int i = 0; i < 10; ++i) {
        try (PreparedStatement ps = c.prepareStatement("SELECT ?::text || '!'")) {
          ps.setString(1, "s" + i);
          try (ResultSet rs = ps.executeQuery()) {
            rs.next();
            expectEq("s" + i + "!", rs.getString(1), "run " + (i + 1));
          }
        }
      }
    }
  }

  static void transactionsAndBatch(Integer threshold) throws SQLException {
    try (Connection c = connect(threshold)) {
      try (Statement s = c.createStatement()) {
        s.execute("CREATE TABLE IF NOT EXISTS " + TABLE + " (id int, v text)");
      }
      int base = ThreadLocalRandom.current().nextInt(1_000_000) * 100;
      c.setAutoCommit(false);
      for (int round = 0; round < 5; ++round) {
        try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + TABLE + " VALUES (?, ?)")) {
          for (int i = 0; i < 10; ++i) {
            ins.setInt(1, base + round * 10 + i);
            ins.setString(2, "v" + i);
            ins.addBatch();
          }
          int[] counts = ins.executeBatch();
          expectEq(10, counts.length, "batch counts");
        }
        try (PreparedStatement sel = c.prepareStatement("SELECT count(*) FROM " + TABLE + " WHERE id >= ? AND id < ?")) {
          sel.setInt(1, base);
          sel.setInt(2, base + 100);
          try (ResultSet rs = sel.executeQuery()) {
            rs.next();
            expectEq((round + 1) * 10, rs.getInt(1), "rows seen in the transaction, round " + (round + 1));
          }
        }
        c.commit();
      }
      c.setAutoCommit(true);
    }
  }

  static void errorThenRepeat(Integer threshold) throws SQLException {
    try (Connection c = connect(threshold); PreparedStatement ps = c.prepareStatement("SELECT 10 / ?::int")) {
      for (int i = 0; i < 8; ++i) {
        ps.setInt(1, i == 3 ? 0 : 1);
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          if (i == 3) throw new AssertionError("division by zero raised no error");
        } catch (SQLException e) {
          if (i != 3 || !"22012".equals(e.getSQLState())) throw e;
        }
      }
      ps.setInt(1, 2);
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        expectEq(5, rs.getInt(1), "after the error");
      }
    }
  }

  // Statements prepared inside a transaction that rolls back stay prepared (Parse is not
  // transactional); pgJDBC goes on using them in the next transactions.
  static void rollbackAfterPrepare(Integer threshold) throws SQLException {
    try (Connection c = connect(threshold); PreparedStatement ps = c.prepareStatement("SELECT ?::int + 7")) {
      c.setAutoCommit(false);
      for (int i = 0; i < 7; ++i) {
        ps.setInt(1, i);
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          expectEq(i + 7, rs.getInt(1), "run " + (i + 1));
        }
      }
      try (Statement s = c.createStatement()) {
        s.executeQuery("SELECT 1 / 0");
        throw new AssertionError("division by zero raised no error");
      } catch (SQLException e) {
        if (!"22012".equals(e.getSQLState())) throw e;
      }
      c.rollback();
      for (int i = 0; i < 7; ++i) {
        ps.setInt(1, i);
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          expectEq(i + 7, rs.getInt(1), "after the rollback, run " + (i + 1));
        }
        c.commit();
      }
    }
  }

  // LISTEN goes by the extended protocol (pgJDBC's default); the listener then sends nothing while
  // another connection notifies; getNotifications(500) must return it within 10 s.
  static void listenNotify() throws Exception {
    String channel = "drivers_" + Long.toHexString(ThreadLocalRandom.current().nextLong() >>> 16);
    try (Connection listener = connect(null); Connection notifier = connect(null)) {
      try (Statement s = listener.createStatement()) {
        s.execute("LISTEN " + channel);
      }
      try (Statement s = notifier.createStatement()) {
        s.execute("NOTIFY " + channel + ", 'hello'");
      }
      PGConnection pg = listener.unwrap(PGConnection.class);
      long deadline = System.nanoTime() + 10_000_000_000L;
      while (System.nanoTime() < deadline) {
        PGNotification[] got = pg.getNotifications(500);
        if (got != null && got.length > 0) {
          expectEq(channel, got[0].getName(), "channel");
          expectEq("hello", got[0].getParameter(), "payload");
          return;
        }
      }
      throw new AssertionError("no notification within 10 s");
    }
  }

  static void copyInOut() throws Exception {
    try (Connection c = connect(null)) {
      try (Statement s = c.createStatement()) {
        s.execute("CREATE TABLE IF NOT EXISTS " + TABLE + "_copy (id int, v text)");
        s.execute("TRUNCATE " + TABLE + "_copy");
      }
      StringBuilder in = new StringBuilder();
      for (int i = 0; i < 20_000; ++i) in.append(i).append("\trow ").append(i).append('\n');
      CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
      long copied = copy.copyIn("COPY " + TABLE + "_copy (id, v) FROM STDIN",
          new ByteArrayInputStream(in.toString().getBytes(StandardCharsets.UTF_8)));
      expectEq(20_000L, copied, "rows copied in");
      ByteArrayOutputStream out = new ByteArrayOutputStream();
      long rows = copy.copyOut("COPY (SELECT id, v FROM " + TABLE + "_copy ORDER BY id) TO STDOUT", out);
      expectEq(20_000L, rows, "rows copied out");
      expectEq(in.toString(), out.toString(StandardCharsets.UTF_8), "what came out is what went in");
      try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT 1")) {
        rs.next();
        expectEq(1, rs.getInt(1), "after COPY");
      }
    }
  }

  static void runCase(String name, Case body) {
    if (!only.isEmpty() && only.stream().noneMatch(name::contains)) return;
    long t0 = System.nanoTime();
    try {
      body.run();
      ++passed;
      System.out.printf("PASS %s (%.1fs)%n", name, (System.nanoTime() - t0) / 1e9);
    } catch (Throwable e) {
      ++failed;
      String state = e instanceof SQLException ? ((SQLException) e).getSQLState() + " " : "";
      System.out.println("FAIL " + name + ": " + state + String.valueOf(e).replace('\n', ' '));
    }
    System.out.flush();
  }

  public static void main(String[] args) {
    for (int i = 0; i + 1 < args.length; ++i) {
      if (args[i].equals("--only")) only.add(args[++i]);
    }
    long t0 = System.nanoTime();
    Integer[] thresholds = {null, 0, 1};
    for (Integer t : thresholds) {
      String label = t == null ? "prepareThreshold=default(5)" : "prepareThreshold=" + t;
      runCase(label + " repeat_prepared", () -> repeatPrepared(t));
      runCase(label + " reprepare_each_time", () -> reprepareEachTime(t));
      runCase(label + " transactions_and_batch", () -> transactionsAndBatch(t));
      runCase(label + " error_then_repeat", () -> errorThenRepeat(t));
    }
    // Last of the prepared cases: on pgkeel as of 2026-12-06 a statement prepared inside a
    // transaction that rolls back can leave the pool believing in a server statement that does
    // not exist, and later cases on that server connection would fail for it.
    for (Integer t : thresholds) {
      String label = t == null ? "prepareThreshold=default(5)" : "prepareThreshold=" + t;
      runCase(label + " rollback_after_prepare", () -> rollbackAfterPrepare(t));
    }
    runCase("listen_extended_notify_idle", Drivers::listenNotify);
    runCase("copy_manager_in_out", Drivers::copyInOut);
    try (Connection c = connect(null); Statement s = c.createStatement()) {
      s.execute("DROP TABLE IF EXISTS " + TABLE + ", " + TABLE + "_copy");
    } catch (SQLException e) {
      System.out.println("note: cleanup failed: " + e);
    }
    System.out.printf("summary: pgJDBC: %d passed, %d failed in %.1fs%n", passed, failed, (System.nanoTime() - t0) / 1e9);
    System.exit(failed == 0 ? 0 : 1);
  }
}
