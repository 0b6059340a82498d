#!/usr/bin/env bash
# `make conformance`: the Autobahn|Testsuite fuzzing client (cases 1-7, 9, 10) against the test-only echo
# socket /ws/echo/ of a real server process with the production limits, then a summary table.
#
# Autobahn|Testsuite runs on Python 2.7 only; it is installed with pyenv's 2.7.18 into .conformance/
# (git-ignored), outside the project's virtualenv. Reports land in .conformance/reports/ (open
# index.html for the per-case wire logs); the summary is printed and written into docs/conformance.md.
#
# Environment: PY27 (the 2.7 interpreter), CONFORMANCE_CASES (default "1.* 2.* ... 10.*"),
# MAX_FRAME_BYTES (default: the server's own default, so the 9.x cases above it must close with 1009).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$PWD
WORK=$ROOT/.conformance
PREFIX=$WORK/py27
SITE=$PREFIX/lib/python2.7/site-packages
PY27=${PY27:-$HOME/.pyenv/versions/2.7.18/bin/python}
PY=$ROOT/.venv/bin/python
VERSION=25.10.1
CASES=${CONFORMANCE_CASES:-"1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.*"}

if [ ! -x "$PY27" ]; then
  echo "Python 2.7 not found at $PY27 (set PY27; pyenv install 2.7.18)" >&2
  exit 2
fi

# -- install (once) ----------------------------------------------------------------------------------
if [ ! -f "$PREFIX/.installed-$VERSION" ]; then
  echo "installing autobahntestsuite $VERSION into $PREFIX"
  rm -rf "$PREFIX"
  mkdir -p "$PREFIX"
  # Some dependencies are source distributions whose setup.py imports setuptools, which pyenv's 2.7
  # lacks: install it into the prefix first and let the build subprocesses find it (absolute path:
  # pip builds in a temporary directory).
  "$PY27" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --prefix "$PREFIX" setuptools==44.0.0 wheel==0.37.1
  PYTHONPATH=$SITE "$PY27" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --prefix "$PREFIX" "autobahntestsuite==$VERSION"
  touch "$PREFIX/.installed-$VERSION"
fi

# -- server ------------------------------------------------------------------------------------------
PORT=$("$PY" -c 'from services.embedded import free_port; print(free_port())')
DATA=$WORK/data
REPORTS=$WORK/reports
LOG=$WORK/server.log
rm -rf "$DATA" "$REPORTS"
mkdir -p "$DATA" "$REPORTS"
FRAME_LIMIT=${MAX_FRAME_BYTES:-$("$PY" -c 'from services.config import Settings; print(Settings().max_frame_bytes)')}

ENABLE_ECHO_ROUTE=true MAX_FRAME_BYTES=$FRAME_LIMIT LOG_FORMAT=text ENVIRONMENT=development \
  "$PY" server.py --port "$PORT" --data-dir "$DATA" >"$LOG" 2>&1 &
SERVER=$!
stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER"
    wait "$SERVER" || true
  fi
}
trap stop_server EXIT

for _ in $(seq 1 300); do
  if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/livez', timeout=1)" 2>/dev/null; then
    break
  fi
  kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; echo "server exited" >&2; exit 1; }
  sleep 0.1
done

# -- the suite -----------------------------------------------------------------------------------------
SPEC=$WORK/fuzzingclient.json
"$PY" - "$SPEC" "$PORT" "$REPORTS" $CASES <<'EOF'
import json, sys

spec_path, port, reports, *cases = sys.argv[1:]
spec = {
    "outdir": reports,
    "servers": [{"agent": "chat-echo", "url": f"ws://127.0.0.1:{port}/ws/echo/"}],
    "cases": cases,
    "exclude-cases": [],
    "exclude-agent-cases": {},
}
with open(spec_path, "w") as f:
    json.dump(spec, f, indent=2)
EOF

echo "running Autobahn|Testsuite $VERSION (cases: $CASES) against ws://127.0.0.1:$PORT/ws/echo/ (MAX_FRAME_BYTES=$FRAME_LIMIT)"
(cd "$WORK" && "$PY27" "$ROOT/scripts/wstest_launcher.py" "$SITE" -m fuzzingclient -s "$SPEC") >"$WORK/wstest.log" 2>&1 || {
  tail -30 "$WORK/wstest.log" >&2
  echo "wstest failed" >&2
  exit 1
}
stop_server
trap - EXIT

"$PY" scripts/conformance_summary.py --reports "$REPORTS" --server-log "$LOG" --max-frame-bytes "$FRAME_LIMIT" \
  --write docs/conformance.md
