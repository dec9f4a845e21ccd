#!/bin/sh
# Stand-in web server of the conformance suite's httpd and nginx images:
# busybox httpd serving, on port 80, the document root the real server's
# image uses. Installed as httpd-foreground (httpd) and as nginx (nginx); the
# name it is called by picks the root. The real servers' own arguments
# (nginx -g 'daemon off;') are accepted and ignored.
case ${0##*/} in
nginx) root=/usr/share/nginx/html ;;
*) root=/usr/local/apache2/htdocs ;;
esac
# As a container's PID 1, busybox httpd would ignore SIGTERM (PID 1 gets no
# default signal actions) and every pod deletion would wait out its grace
# period; this shell stays PID 1 and stops the server on TERM/INT instead.
trap 'kill "$server" 2>/dev/null; exit 0' TERM INT
/bin/busybox httpd -f -v -p 80 -h "$root" &
server=$!
wait "$server"
