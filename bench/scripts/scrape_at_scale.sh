#!/usr/bin/env bash
# The cost of a /metrics scrape at N spliced connections, and what it does to traffic:
# bench/scripts/scrape_at_scale.sh BINARY [N]   (root; N = 8000 by default: two sockets per
# connection in the daemon and in the Python peer stay under a 20,000 open-files hard limit).
# Runs in a namespace of its own (deleted at the end); the daemon's kernel path with
# local_agents = false, so every connection is a spliced pair.
set -euo pipefail
BIN=$1
N=${2:-8000}
NS=scrape-bench-$$
DIR=$(mktemp -d)
trap 'pkill -f "run -c $DIR/agent-proxy.toml" || true; sleep 1; ip netns del $NS 2>/dev/null || true; rm -rf "$DIR"' EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
cat > "$DIR/agent-proxy.toml" <<T
[global]
admin = "127.0.0.1:19090"
dataplane = "kernel"
local_agents = false
max_connections = 30000
[[frontend]]
name = "a"
listen = "127.0.0.1:18080"
backend = "b"
max_connections = 30000
[[backend]]
name = "b"
servers = ["127.0.0.1:18081"]
T
ip netns exec "$NS" "$BIN" run -c "$DIR/agent-proxy.toml" 2>"$DIR/daemon.log" &
sleep 1.5
ip netns exec "$NS" python3 "$(dirname "$0")/scrape_at_scale.py" "$N"
