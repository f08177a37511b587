# Sourced by the scripts that drive `llmrec serve`: start_server BIN CONFIG PORT LOG
# starts it in the background (its pid in $server; killed when the script exits,
# which also removes $work) and waits up to 300 s for /readyz; if the server dies
# first its log is printed and the script fails.
start_server() {
  local bin=$1 config=$2 port=$3 log=$4
  "$bin" serve --config "$config" >"$log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true; rm -rf "${work:-}"' EXIT
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$server" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 1
  done
  echo "error: the server was not ready after 300 s" >&2
  cat "$log"
  exit 1
}
