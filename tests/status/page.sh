#!/usr/bin/env bash
# tests/status/page.sh — loads pgkeel's status page in headless Chromium, as a person's browser
# would: the page's own JavaScript fetches /api/status and draws it.
#   page.sh dom URL                       prints the rendered DOM
#   page.sh screenshot URL OUT.png [W,H]  writes a PNG of the page (default 1440,1100)
# Exits 2 when Chromium is missing (tools/install-deps.sh installs Debian's chromium).
set -euo pipefail

if (($# < 2)); then
  echo "usage: page.sh dom URL | page.sh screenshot URL OUT.png [WIDTH,HEIGHT]" >&2
  exit 64
fi
mode=$1
url=$2

browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$browser" ]]; then
  echo "page.sh: chromium not found; tools/install-deps.sh installs it" >&2
  exit 2
fi

profile=$(mktemp -d "${TMPDIR:-/tmp}/pgkeel-chromium.XXXXXX")
trap 'rm -rf "$profile"' EXIT

# No sandbox: the tests run as root. The background-networking flags keep Chromium from calling
# out (this machine has no network beyond loopback). The virtual-time budget lets the page run
# its first polls and render before the DOM is dumped or the screenshot taken.
flags=(
  --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync --disable-extensions
  --disable-default-apps --hide-scrollbars --user-data-dir="$profile" --virtual-time-budget=5000
)

status=0
case "$mode" in
  dom)
    "$browser" "${flags[@]}" --window-size=1440,1100 --dump-dom "$url" 2>"$profile/stderr" || status=$?
    ;;
  screenshot)
    out=${3:?screenshot needs OUT.png}
    "$browser" "${flags[@]}" --window-size="${4:-1440,1100}" --screenshot="$out" "$url" \
      >"$profile/stdout" 2>"$profile/stderr" || status=$?
    if ((status == 0)) && [[ ! -s "$out" ]]; then
      echo "page.sh: chromium exited 0 but wrote no screenshot" >&2
      status=1
    fi
    ;;
  *)
    echo "page.sh: unknown mode $mode" >&2
    exit 64
    ;;
esac
if ((status != 0)); then
  echo "page.sh: chromium exited with $status; its stderr:" >&2
  tail -n 40 "$profile/stderr" >&2 || true
fi
exit "$status"
