#!/usr/bin/env bash
# Browser tests of the web console: starts a fresh `semel demo` with the
# HTTP/JSON face, then drives the system Chromium through Playwright
# (playwright-core, no browser download) with each organisation's client
# certificate.
# Usage: run.sh SEMEL_BINARY SCREENSHOTS_DIR
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 SEMEL_BINARY SCREENSHOTS_DIR" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
mkdir -p "$2"
shots=$(cd "$2" && pwd)
[ -x "$bin" ] || { echo "console tests: no semel binary at $bin" >&2; exit 1; }

chromium=${SEMEL_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "console tests: installing Debian's chromium"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q chromium
    fi
    [ -x "$chromium" ] || {
        echo "console tests: $chromium is missing; install Debian's chromium (apt-get install chromium) or set SEMEL_CHROMIUM" >&2
        exit 1
    }
fi
export SEMEL_CHROMIUM=$chromium

if [ ! -d "$here/node_modules/playwright-core" ] || [ ! -d "$here/node_modules/axe-core" ]; then
    (cd "$here" && npm ci --no-audit --no-fund)
fi

dir=$(mktemp -d)
"$bin" demo --data-dir "$dir" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --http-listen 127.0.0.1:0 --population 2000 >"$dir/demo.log" 2>&1 &
demo_pid=$!
cleanup() {
    kill "$demo_pid" 2>/dev/null || true
    wait "$demo_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
    [ -f "$dir/demo.json" ] && break
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.1
done
if [ ! -f "$dir/demo.json" ]; then
    echo "console tests: the demo did not start; its log:" >&2
    cat "$dir/demo.log" >&2
    exit 1
fi

status=0
(cd "$here" && node console.test.mjs "$dir" "$shots" "$bin") || status=$?
if [ "$status" -ne 0 ]; then
    echo "console tests failed; the demo's log (last 40 lines):" >&2
    tail -40 "$dir/demo.log" >&2
fi
exit "$status"
