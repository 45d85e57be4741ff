#!/bin/sh
# busybox httpd runs this for a directory URL without an index.html. In mode "unhealthy"
# /www/healthz is a directory, so GET /healthz is redirected to /healthz/ and lands here.
case "${REQUEST_URI%%\?*}" in
    /healthz/)
        printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nunhealthy\n'
        ;;
    /)
        # Every Nth request fails (a counter: each CGI is a new shell, so RANDOM repeats):
        # N=2 in mode "errors", or what a mounted /control directory says (0: none fail).
        version=$(cat /tmp/demo/version)
        every=$(cat /tmp/demo/fail-every)
        if [ -r "/control/fail-every-$version" ]; then
            every=$(cat "/control/fail-every-$version")
        elif [ -r /control/fail-every ]; then
            every=$(cat /control/fail-every)
        fi
        # Renamed into place, so a request running beside this one never reads it half
        # written (an empty count would fail a request that should not).
        served=$(cat /tmp/demo/served 2>/dev/null)
        served=${served:-0}
        echo $((served + 1)) > "/tmp/demo/served.$$" && mv -f "/tmp/demo/served.$$" /tmp/demo/served
        if [ "$every" -gt 0 ] 2>/dev/null && [ $((served % every)) -eq 0 ]; then
            printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\n'
            printf 'failed: '
        else
            printf 'Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n'
        fi
        cat /tmp/demo/banner
        ;;
    *)
        printf 'Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnot found\n'
        ;;
esac
