// tests/jdbc/MultiHostWriter.java — a pgJDBC writer loop through a multi-host URL
// (jdbc:postgresql://pk1,pk2/app?targetServerType=primary), as an application server would run it
// across pgkeel instance failures: one INSERT per iteration, numbered; on any error the connection
// is dropped and opened again through the URL, which moves on to the next host.
//
//   java -cp <classes>:postgresql.jar MultiHostWriter <url> <user> <password> <seconds> <ack-file>
//
// Prints "acknowledged=N errors=E reconnects=R"; writes every acknowledged id, one a line, to
// <ack-file>. Exit 0 when it ran to the end (the checks are the caller's).
import java.io.PrintWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.SQLException;
import java.util.Properties;

public class MultiHostWriter {
  public static void main(String[] args) throws Exception {
    if (args.length != 5) {
      System.err.println("usage: MultiHostWriter <url> <user> <password> <seconds> <ack-file>");
      System.exit(2);
    }
    Properties p = new Properties();
    p.setProperty("user", args[1]);
    p.setProperty("password", args[2]);
    p.setProperty("connectTimeout", "3");
    p.setProperty("socketTimeout", "10");
    final long end = System.currentTimeMillis() + Long.parseLong(args[3]) * 1000L;
    long id = 0;
    long acknowledged = 0;
    long errors = 0;
    long reconnects = 0;
    try (PrintWriter acks = new PrintWriter(args[4])) {
      Connection c = null;
      while (System.currentTimeMillis() < end) {
        try {
          if (c == null) {
            c = DriverManager.getConnection(args[0], p);
            c.setAutoCommit(true);
            ++reconnects;
          }
          ++id;
          try (PreparedStatement s = c.prepareStatement("INSERT INTO jdbc_multihost (id) VALUES (?)")) {
            s.setLong(1, id);
            s.executeUpdate();
          }
          ++acknowledged;
          acks.println(id);
          acks.flush();
          Thread.sleep(20);
        } catch (SQLException e) {
          ++errors;
          System.err.println("error: " + e.getSQLState() + " " + e.getMessage());
          if (c != null) {
            try {
              c.close();
            } catch (SQLException ignored) {
            }
          }
          c = null;
          Thread.sleep(100);
        }
      }
      if (c != null) c.close();
    }
    System.out.println("acknowledged=" + acknowledged + " errors=" + errors + " reconnects=" + reconnects);
  }
}
