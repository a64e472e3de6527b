#!/usr/bin/env bash
# tools/free-ports.sh N — prints N distinct TCP ports on 127.0.0.1 that the OS reported free a
# moment ago (all bound to port 0 together, so they differ). Shared by cluster.sh, bench.sh and
# demo.sh. Without python3 it falls back to probing random ports with bash's /dev/tcp.
set -euo pipefail
n=${1:?usage: free-ports.sh N}
if command -v python3 >/dev/null 2>&1; then
  exec python3 - "$n" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
fi
ports=()
while ((${#ports[@]} < n)); do
  p=$((20000 + RANDOM % 12000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && [[ " ${ports[*]} " != *" $p "* ]]; then
    ports+=("$p")
  fi
done
echo "${ports[*]}"
