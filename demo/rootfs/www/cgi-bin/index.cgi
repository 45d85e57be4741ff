#!/bin/sh
# busybox httpd runs this for a directory URL without an index.html. In mode "unhealthy"
# /www/healthz is a directory, so GET /healthz is redirected to /healthz/ and lands here.
case "${REQUEST_URI%%\?*}" in
    /healthz/)
        printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nunhealthy\n'
        ;;
    /)
        # Every other request fails (a counter: each CGI is a new shell, so RANDOM repeats).
        served=$(cat /tmp/demo/served 2>/dev/null || echo 0)
        echo $((served + 1)) > /tmp/demo/served
        if [ $((served % 2)) -eq 0 ]; then
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
