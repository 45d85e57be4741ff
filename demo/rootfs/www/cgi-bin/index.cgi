#!/bin/sh
# busybox httpd runs this for a directory URL without an index.html. In mode "unhealthy"
# /www/healthz is a directory, so GET /healthz is redirected to /healthz/ and lands here.
case "${REQUEST_URI%%\?*}" in
    /healthz/)
        printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nunhealthy\n'
        ;;
    *)
        printf 'Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnot found\n'
        ;;
esac
