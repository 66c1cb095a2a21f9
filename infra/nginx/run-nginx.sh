#!/bin/sh
# The nginx container's command: nginx in the foreground, reloaded when it must re-read
# something it only reads at (re)load time.
#
# - The gateway's replicas. nginx resolves `wechat-gateway` in the upstream block when it
#   loads its configuration, which is what lets it keep connections to them alive. When
#   `docker compose up --scale wechat-gateway=N` (or a restart) changes the set of
#   addresses Docker's DNS returns, this loop reloads nginx within WATCH_INTERVAL_S.
# - The certificate. With CERT_RELOAD_S set (compose.prod.yaml: 12 h), nginx reloads that
#   often, so a certificate certbot renewed is served without a restart.
#
# A reload is graceful: requests in flight finish on the old workers.
set -u

upstream_host="${GATEWAY_UPSTREAM_HOST:-wechat-gateway}"
interval_s="${WATCH_INTERVAL_S:-3}"
cert_reload_s="${CERT_RELOAD_S:-0}"

addresses() {
    getent ahostsv4 "$upstream_host" 2>/dev/null | awk '{print $1}' | sort -u | tr '\n' ' '
}

nginx -g 'daemon off;' &
nginx_pid=$!
trap 'kill -QUIT "$nginx_pid" 2>/dev/null; wait "$nginx_pid"; exit 0' TERM QUIT INT

known=$(addresses)
since_reload_s=0
while kill -0 "$nginx_pid" 2>/dev/null; do
    sleep "$interval_s" &
    wait $!
    since_reload_s=$((since_reload_s + interval_s))
    current=$(addresses)
    if [ -n "$current" ] && [ "$current" != "$known" ]; then
        echo "run-nginx: $upstream_host is now [ $current] (was [ $known]); reloading" >&2
        nginx -s reload && known=$current && since_reload_s=0
    elif [ "$cert_reload_s" -gt 0 ] && [ "$since_reload_s" -ge "$cert_reload_s" ]; then
        echo "run-nginx: periodic reload for a renewed certificate" >&2
        nginx -s reload && since_reload_s=0
    fi
done
wait "$nginx_pid"
