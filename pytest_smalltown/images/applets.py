"""The applet table: common busybox invocations, run through ``sh -c`` as pods' scripts run them.

One table, three judges: the busybox build runs its offline rows on the new
binary (:func:`pytest_smalltown.images.busybox.check_binary`), a unit test
runs every row that needs no cluster on the cached binary, and
``e2e/test_applets.py`` runs all of them in a pod against a web server pod.

The whole table is one shell script (:func:`table_script`), so a pod runs it
in one start. Each row is run by ``sh -c`` in its own directory, with its
output and exit status framed by marker lines, using only shell builtins
(the applets are what is under test). :func:`judge` then reports every row
that crashed (exit 128 or more), printed a usage text or an "invalid option",
or printed something other than what upstream's busybox prints.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.base.processes import run_supervised
from pytest_smalltown.contract import CLUSTER_DOMAIN, KUBERNETES_SERVICE_IP

#: What the table's web server serves at ``/``.
WEB_BODY = "served by busybox httpd"

#: Output that means an applet refused or lacked what the row asked of it.
REFUSALS = re.compile(r"invalid option|unrecognized option|applet not found|: not found|\bUsage: |BusyBox v\d")

#: Seconds a row may run before the script kills it (a hung row is a failed row, not a hung test).
ROW_SECONDS = 20


@dataclass(frozen=True)
class Invocation:
    """One row: a command line as a pod's script would write it, and what it must print.

    ``expect`` is a regular expression the whole output (stdout and stderr,
    trailing whitespace removed) must match. ``needs`` names what the row
    uses besides the image: ``loopback`` (it listens on 127.0.0.1), ``web``
    (the server of :func:`web_server_script` at ``$WEB_HOST``/``$WEB_IP``
    port ``$WEB_PORT``), ``cluster`` (a cluster's DNS).
    """

    name: str
    command: str
    expect: str
    needs: frozenset[str] = frozenset()


def _row(name: str, command: str, expect: str, *needs: str) -> Invocation:
    return Invocation(name, command, expect, frozenset(needs))


_URL = "http://$WEB_HOST:$WEB_PORT/"
_BODY = re.escape(WEB_BODY)

APPLET_TABLE: tuple[Invocation, ...] = (
    # networking: what pods' scripts fetch and probe services with
    _row("wget -q -T -O -", f'wget -q -T 3 -O - "{_URL}"', _BODY, "web"),
    _row("wget -qT -O file", f'wget -qT3 -O page "{_URL}" && cat page', _BODY, "web"),
    _row("wget --timeout pod IP", 'wget -q --timeout=3 -O - "http://$WEB_IP:$WEB_PORT/"', _BODY, "web"),
    _row("wget --spider", f'wget -q --spider -T 3 "{_URL}" && echo found', "found", "web"),
    _row("nc -w http", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 \"$WEB_HOST\" \"$WEB_PORT\" | tail -n 1",
         _BODY, "web"),
    _row("nc -z -w", 'nc -z -w 3 "$WEB_IP" "$WEB_PORT" && echo open', "open", "web"),
    # busybox's nslookup applies the search domains only to names without a dot
    # (upstream's too, since 1.28): "nslookup kubernetes.default" asks for that
    # name as it is and fails in every cluster; the full name is what works.
    _row("nslookup", f"nslookup kubernetes.default.svc.{CLUSTER_DOMAIN}",
         rf"(?s).*Name:\s+kubernetes\.default\.svc\.{re.escape(CLUSTER_DOMAIN)}\s+"
         rf"Address:\s+{re.escape(KUBERNETES_SERVICE_IP)}\b.*", "cluster"),
    _row("nc -l and nc -w", "nc -l -p 17070 > got & sleep 1; echo hello | nc -w 2 127.0.0.1 17070; wait; cat got",
         "hello", "loopback"),
    _row("httpd -f -p -h", "mkdir www && echo served > www/index.html; httpd -f -p 127.0.0.1:18080 -h www & "
         "pid=$!; sleep 1; wget -q -T 3 -O - http://127.0.0.1:18080/; kill $pid", "served", "loopback"),
    # processes and time
    _row("timeout", 'timeout 1 sleep 5; echo "rc=$?"', "(Terminated\n)?rc=143"),
    _row("timeout -s KILL", 'timeout -s KILL 1 sleep 5; echo "rc=$?"', "(Killed\n)?rc=137"),
    _row("sleep fraction", "sleep 0.1 && echo slept", "slept"),
    _row("date -u -d @", "date -u -d @0 +%Y-%m-%dT%H:%M:%S", "1970-01-01T00:00:00"),
    _row("date -d string", "date -u -d '2024-02-29 12:34:56' +%s", "1709210096"),
    _row("date -I -D", "date -u -I -d @86400; date -u -D %d.%m.%Y -d 01.02.2000 +%F", "1970-01-02\n2000-02-01"),
    _row("ps -o etime,time", "ps -o pid,etime,time,comm | head -n 1", r"\s*PID\s+ELAPSED\s+TIME\s+COMMAND"),
    _row("top -b -n 1", "top -b -n 1 | head -n 1", r"Mem: .*"),
    _row("env -i", "env -i A=1 env", "A=1"),
    _row("id -u, uname -m, nproc", "id -u; uname -m; nproc", r"\d+\nx86_64\n\d+"),
    # archives and checksums
    _row("tar c and x", "mkdir -p in/d && echo hello > in/d/f && tar -cf a.tar -C in d && mkdir out "
         "&& tar -xf a.tar -C out && cat out/d/f", "hello"),
    _row("tar czf, tar tzf", "mkdir d && echo x > d/f && tar czf a.tgz d && tar tzf a.tgz | sort", "d/\nd/f"),
    _row("tar -T list", "echo hi > f && echo f > list && tar -cf a.tar -T list && tar -tf a.tar", "f"),
    _row("tar x autodetect -O", "echo hi > f && tar czf a.tgz f && tar -xOf a.tgz", "hi"),
    _row("gzip -c, gunzip -c", "echo zipped | gzip -c | gunzip -c", "zipped"),
    _row("cpio -o -H newc, -t", "echo x > f && echo f | cpio -o -H newc 2>/dev/null > a.cpio && cpio -t < a.cpio "
         "2>/dev/null", "f"),
    _row("sha256sum", "printf abc | sha256sum",
         r"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  -"),
    _row("sha256sum -c", "printf abc > f && sha256sum f > sums && sha256sum -c sums", "f: OK"),
    _row("md5sum", "printf abc | md5sum", r"900150983cd24fb0d6963f7d28e17f72  -"),
    _row("sha1sum", "printf abc | sha1sum", r"a9993e364706816aba3e25717850c26c9cd0d89d  -"),
    _row("base64 and -d", "printf hello | base64; echo aGVsbG8= | base64 -d", "aGVsbG8=\nhello"),
    _row("od -An -tx1", "printf AB | od -An -tx1", r"\s*41 42"),
    # text
    _row("seq -s -w", "seq -s , 1 5; seq -w 8 10 | tr '\\n' ' '", "1,2,3,4,5\n08 09 10"),
    _row("sort -k -n -u", "printf '10 b\\n9 a\\n10 a\\n9 a\\n' | sort -u -k1,1n -k2", "9 a\n10 a\n10 b"),
    _row("sort -t -r", "printf 'a:2\\nb:10\\nc:1\\n' | sort -t: -k2 -n -r | head -n 1", "b:10"),
    _row("awk arithmetic and libm", "echo '3 4' | awk '{ printf \"%d %d %s\\n\", $1 * $2, sqrt(16), toupper(\"x\") }'",
         "12 4 X"),
    _row("awk -F -v", "echo 'a:b:c' | awk -F: -v n=2 '{ print $n, NF }'", "b 3"),
    _row("sed -i", "printf 'a\\nb\\n' > f && sed -i 's/a/x/' f && cat f", "x\nb"),
    _row("sed -i.bak -E", "echo aaa > f && sed -i.bak -E 's/a+/b/' f && cat f f.bak", "b\naaa"),
    _row("grep -E -o -c", "printf 'ab12\\ncd\\n' | grep -Eo '[0-9]+'; printf 'a\\nb\\na\\n' | grep -c a", "12\n2"),
    _row("cut, tr, uniq -c", "printf 'a:1\\na:2\\nb:3\\n' | cut -d: -f1 | uniq -c | tr -s ' '", r" ?2 a\n ?1 b"),
    _row("head -c, tail -n +", "printf 'abcdef' | head -c 3; echo; printf '1\\n2\\n3\\n' | tail -n +2", "abc\n2\n3"),
    _row("xargs -n", "printf 'a b c' | xargs -n 1 echo", "a\nb\nc"),
    _row("xargs -I -0", "printf 'x\\0y\\0' | xargs -0 -I{} echo '<{}>'", "<x>\n<y>"),
    _row("expr", "expr 3 + 4", "7"),
    _row("diff -u", "echo a > x && echo b > y; diff -u x y | tail -n 2", "-a\n\\+b"),
    # files
    _row("find -exec ;", "mkdir -p t/a && touch t/a/x.txt t/y.txt t/z.log "
         "&& find t -name '*.txt' -exec echo found {} \\; | sort", "found t/a/x.txt\nfound t/y.txt"),
    _row("find -exec + -maxdepth -type", "mkdir -p t/a && touch t/a/x t/y && find t -maxdepth 1 -type f -exec ls {} +",
         "t/y"),
    _row("find -delete", "mkdir t && touch t/a.tmp t/b && find t -name '*.tmp' -delete && ls t", "b"),
    _row("find -mmin -size -newer", "touch old && sleep 1 && touch new "
         "&& find . -maxdepth 1 -type f -mmin -5 -size -1k -newer old", "./new"),
    _row("dd bs count", "dd if=/dev/zero of=z bs=1024 count=4 2>/dev/null && wc -c < z", r"\s*4096"),
    _row("dd status=none", "dd if=/dev/zero bs=1k count=1 status=none | wc -c", r"\s*1024"),
    _row("dd status line", "dd if=/dev/zero of=/dev/null bs=1k count=1 2>&1 | tail -n 1",
         r"1024 bytes \(1\.0KB\) copied, .*"),
    _row("stat -c", "echo x > f && stat -c '%s %n' f", "2 f"),
    _row("ln -s, ls -l, readlink -f", "touch f && ln -s f l && ls -l l | awk '{ print $NF }' && readlink -f l | "
         "sed 's,.*/,,'", "f\nf"),
    _row("tee -a", "echo a | tee -a f > /dev/null; echo b | tee -a f > /dev/null; cat f", "a\nb"),
    _row("mktemp -d, basename, dirname", "d=$(mktemp -d) && basename \"$d/x.txt\" .txt && dirname /a/b/c", "x\n/a/b"),
    _row("du -s, df", "echo x > f && du -s f | cut -f2; df / | head -n 1 | cut -c1-10", "f\nFilesystem"),
)


def web_server_script(docroot: str, listen: str) -> str:
    """The shell command of the table's web server: busybox httpd in the foreground, serving :data:`WEB_BODY`."""
    return (f"mkdir -p {docroot} && echo '{WEB_BODY}' > {docroot}/index.html "
            f"&& exec httpd -f -p {listen} -h {docroot}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


#: The runner of every row, in shell builtins save ``mkdir``, ``mktemp``, ``sleep`` and ``kill``'s target.
_PROLOGUE = f"""\
base=$(mktemp -d) || exit 1
n=0
row() {{
    n=$((n + 1))
    mkdir "$base/$n" || exit 1
    (cd "$base/$n" && exec sh -c "$2") > "$base/$n.out" 2>&1 < /dev/null &
    pid=$!
    (sleep {ROW_SECONDS}; kill -9 "$pid") > /dev/null 2>&1 &
    watchdog=$!
    wait "$pid"
    rc=$?
    kill "$watchdog" 2> /dev/null
    echo "@@row $1 rc=$rc"
    while IFS= read -r line || [ -n "$line" ]; do printf '%s\\n' "$line"; done < "$base/$n.out"
    echo "@@end"
}}
"""


def table_script(rows: Iterable[Invocation]) -> str:
    """One ``sh`` script that runs every row through ``sh -c`` and frames what each printed."""
    return _PROLOGUE + "".join(f"row {_quote(row.name)} {_quote(row.command)}\n" for row in rows) + "echo '@@done'\n"


_FRAME = re.compile(r"^@@row ([^\n]*) rc=(\d+)\n(.*?)^@@end$", re.M | re.S)


def parse_results(output: str) -> dict[str, tuple[int, str]]:
    """``{row name: (exit status, output)}`` from what :func:`table_script` printed."""
    return {match[1]: (int(match[2]), match[3].rstrip()) for match in _FRAME.finditer(output)}


def judge(rows: Sequence[Invocation], output: str) -> list[str]:
    """One line per row that failed, naming it and why; empty if all passed."""
    results = parse_results(output)
    failures = []
    for row in rows:
        if row.name not in results:
            failures.append(f"{row.name}: no result (the script stopped before it)")
            continue
        rc, printed = results[row.name]
        shown = printed.replace("\n", "\\n")[:300]
        if rc >= 128:
            failures.append(f"{row.name}: crashed (exit {rc}, signal {rc - 128}): `{row.command}` printed {shown!r}")
        elif REFUSALS.search(printed):
            failures.append(f"{row.name}: refused (exit {rc}): `{row.command}` printed {shown!r}")
        elif rc != 0 or not re.fullmatch(row.expect, printed):
            failures.append(f"{row.name}: exit {rc}, printed {shown!r}, expected /{row.expect}/: `{row.command}`")
    return failures


def run_on_host(busybox: Path, workdir: Path, rows: Sequence[Invocation],
                env: Mapping[str, str] | None = None) -> list[str]:
    """Run ``rows`` with the binary ``busybox`` as a pod would (only its applets on PATH); :func:`judge`'s failures.

    ``workdir`` gets a ``bin`` directory with a link per applet (the image's
    /bin) and the rows' scratch directories.
    """
    bin_dir = workdir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    listed = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in listed:
        if not (bin_dir / applet).exists():
            (bin_dir / applet).symlink_to(busybox.resolve())
    (workdir / "tmp").mkdir(exist_ok=True)
    proc = run_supervised([str(busybox), "sh", "-c", table_script(rows)],
                          env={"PATH": str(bin_dir), "TMPDIR": str(workdir / "tmp"), "HOME": str(workdir),
                               "TZ": "UTC", **(env or {})})
    return judge(rows, proc.stdout + proc.stderr)

