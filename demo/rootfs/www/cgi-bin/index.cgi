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
        # Two more knobs in /control, per version or for all (read, not cat: no fork):
        # delay-ms-<version>: each GET / waits that many milliseconds before it answers;
        # fail-ppm-<version>: each GET / fails at random, that many chances in a million
        # (requests independent of each other, unlike the counter), instead of fail-every.
        delay='' ppm='' fails=no
        [ -r "/control/delay-ms-$version" ] && read -r delay < "/control/delay-ms-$version"
        [ -z "$delay" ] && [ -r /control/delay-ms ] && read -r delay < /control/delay-ms
        [ -r "/control/fail-ppm-$version" ] && read -r ppm < "/control/fail-ppm-$version"
        [ -z "$ppm" ] && [ -r /control/fail-ppm ] && read -r ppm < /control/fail-ppm
        if [ -n "$ppm" ]; then
            draw=$(od -An -N4 -tu4 /dev/urandom)
            [ $((draw % 1000000)) -lt "$ppm" ] 2>/dev/null && fails=yes
        elif [ "$every" -gt 0 ] 2>/dev/null && [ $((served % every)) -eq 0 ]; then
            fails=yes
        fi
        if [ "$delay" -gt 0 ] 2>/dev/null; then
            usleep $((delay * 1000))
        fi
        if [ "$fails" = yes ]; then
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
