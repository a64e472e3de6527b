#!/usr/bin/env bash
# tests/jdbc/run.sh — compiles JdbcSuite.java into a temporary folder and runs it; the exit status
# is the suite's (0 only if every check passed).
#
#   tests/jdbc/run.sh <jdbc-url> <user> <password>
#   e.g. tests/jdbc/run.sh jdbc:postgresql://127.0.0.1:6432/app app app-pass
#   over TLS (pgkeel with [tls] cert_file/key_file), as tests/integration/jdbc_tls_test.cc runs it:
#        tests/jdbc/run.sh "jdbc:postgresql://127.0.0.1:6432/app?ssl=true&sslmode=require" app app-pass
#        ("...&sslmode=verify-full&sslrootcert=ca.crt" checks the certificate too; with
#        sslmode=require pgJDBC verifies against ~/.postgresql/root.crt only if that file exists)
#
# PGJDBC_JAR overrides the driver jar (default: Debian's libpostgresql-jdbc-java).
set -euo pipefail
if (($# != 3)); then
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
jar=${PGJDBC_JAR:-/usr/share/java/postgresql.jar}
[[ -f "$jar" ]] || { echo "run.sh: pgJDBC jar $jar not found (tools/install-deps.sh installs it)" >&2; exit 2; }
classes=$(mktemp -d "${TMPDIR:-/tmp}/jdbcsuite.XXXXXX")
trap 'rm -rf "$classes"' EXIT
javac -cp "$jar" -d "$classes" "$here/JdbcSuite.java"
java -cp "$classes:$jar" JdbcSuite "$@"
