// TxpoolJdbc — what issue 14 saw pgJDBC do through transaction pooling, as pgJDBC does it:
//   1. LISTEN sent by pgJDBC (extended protocol), NOTIFY from another connection, and
//      PGConnection.getNotifications(500) on the idle listener until it arrives (at most 10 s);
//   2. server-side prepared statements (prepareThreshold=1) on two connections, then another
//      connection's DEALLOCATE ALL (Rails' clear_cache! sends it) and DISCARD ALL: the
//      statements still run;
//   3. CopyManager.copyIn (extended-protocol COPY: two Syncs, one ReadyForQuery), then another
//      connection runs at once.
// Single file, no build tool:
//
//   javac -cp /usr/share/java/postgresql.jar -d OUTDIR tests/jdbc/TxpoolJdbc.java
//   java -cp OUTDIR:/usr/share/java/postgresql.jar TxpoolJdbc <jdbc-url> <user> <password>
//
// Prints "TxpoolJdbc: ok" and exits 0, or prints what failed and exits 1.

import java.io.StringReader;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public final class TxpoolJdbc {
    private static Connection connect(String url, String user, String password) throws Exception {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("prepareThreshold", "1");
        return DriverManager.getConnection(url, p);
    }

    private static int selectInt(PreparedStatement ps, int arg) throws Exception {
        ps.setInt(1, arg);
        try (ResultSet rs = ps.executeQuery()) {
            rs.next();
            return rs.getInt(1);
        }
    }

    interface Part {
        void run() throws Exception;
    }

    private static int failures = 0;

    private static void part(String name, Part p) {
        try {
            p.run();
            System.out.println("TxpoolJdbc: " + name + ": ok");
        } catch (Throwable e) {
            ++failures;
            System.out.println("TxpoolJdbc: " + name + ": FAILED: " + e);
        }
    }

    public static void main(String[] args) throws Exception {
        final String url = args[0], user = args[1], password = args[2];
        part("LISTEN/NOTIFY to an idle listener", () -> {
            try (Connection listener = connect(url, user, password); Connection a = connect(url, user, password)) {
                try (Statement st = listener.createStatement()) {
                    st.execute("LISTEN txpool_jdbc");
                }
                try (Statement st = a.createStatement()) {
                    st.execute("NOTIFY txpool_jdbc, 'from a'");
                }
                PGConnection pg = listener.unwrap(PGConnection.class);
                PGNotification got = null;
                for (int i = 0; i < 20 && got == null; ++i) {
                    PGNotification[] n = pg.getNotifications(500);
                    if (n != null && n.length > 0) got = n[0];
                }
                if (got == null || !"from a".equals(got.getParameter())) throw new AssertionError("no notification in 10 s");
            }
        });
        part("server-side statements after another connection's DEALLOCATE ALL and DISCARD ALL", () -> {
            try (Connection a = connect(url, user, password); Connection b = connect(url, user, password)) {
                PreparedStatement pa = a.prepareStatement("SELECT ?::int + 100");
                PreparedStatement pb = b.prepareStatement("SELECT ?::int + 100");
                for (int i = 0; i < 3; ++i) {
                    if (selectInt(pa, i) != i + 100 || selectInt(pb, i) != i + 100) throw new AssertionError("wrong result");
                }
                for (String drop : new String[] {"DEALLOCATE ALL", "DISCARD ALL"}) {
                    try (Connection c = connect(url, user, password); Statement st = c.createStatement()) {
                        st.execute(drop);
                    }
                    for (int i = 0; i < 3; ++i) {
                        if (selectInt(pa, i) != i + 100 || selectInt(pb, i) != i + 100) {
                            throw new AssertionError("wrong result after " + drop);
                        }
                    }
                }
            }
        });
        part("CopyManager.copyIn, then other statements", () -> {
            try (Connection a = connect(url, user, password); Connection b = connect(url, user, password)) {
                try (Statement st = a.createStatement()) {
                    st.execute("CREATE TABLE IF NOT EXISTS txpool_jdbc_copy (i int, t text)");
                }
                CopyManager cm = a.unwrap(PGConnection.class).getCopyAPI();
                long rows = cm.copyIn("COPY txpool_jdbc_copy FROM STDIN", new StringReader("1\tone\n2\ttwo\n"));
                if (rows != 2) throw new AssertionError("copyIn: " + rows + " rows");
                PreparedStatement pb = b.prepareStatement("SELECT ?::int + 100");
                PreparedStatement pa = a.prepareStatement("SELECT ?::int + 100");
                if (selectInt(pb, 7) != 107 || selectInt(pa, 8) != 108) throw new AssertionError("wrong result after COPY");
            }
        });
        System.out.println(failures == 0 ? "TxpoolJdbc: ok" : "TxpoolJdbc: " + failures + " failed");
        System.exit(failures == 0 ? 0 : 1);
    }
}
