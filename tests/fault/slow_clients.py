#!/usr/bin/env python3
"""Slow HTTP clients (slowloris) for the fault tests.

    slow_clients.py --port P [--host 127.0.0.1] [--source 127.0.0.2]
                    [--count 200] [--interval 1] [--hold 60] --state FILE

Opens --count connections to host:port from the address --source, sends the
first line of a GET and then one more header line every --interval seconds,
never the blank line that would end the headers. Runs until every connection
is closed or --hold seconds have passed. FILE is rewritten after each round:

    opened N        connections the server accepted and kept past the first write
    open N          still open now
    refused N       closed before the first header line was sent, or never connected
    closed N        closed by the server while headers were still trickling in
    lines_max N     most header lines one connection got to send
"""
import argparse
import os
import socket
import time


def write_state(path, **counts):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for key, value in counts.items():
            f.write("%s %d\n" % (key, value))
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--source", default="127.0.0.2")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--hold", type=float, default=60.0)
    ap.add_argument("--state", required=True)
    args = ap.parse_args()

    conns = []  # [socket, lines sent]
    refused = 0
    for _ in range(args.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((args.source, 0))
        s.settimeout(5)
        try:
            s.connect((args.host, args.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            conns.append([s, 0])
        except OSError:
            refused += 1
            s.close()
    # a connection the server refused (limit reached) is closed by it at
    # once: sort those out before counting what it holds
    time.sleep(0.5)
    opened = []
    for c in conns:
        c[0].setblocking(False)
        try:
            c[0].recv(1024)  # EOF, or an answer (an error page): refused
            refused += 1
            c[0].close()
            continue
        except BlockingIOError:
            pass
        except OSError:
            refused += 1
            c[0].close()
            continue
        opened.append(c)
    n_opened = len(opened)
    closed = 0
    lines_max = 0
    deadline = time.monotonic() + args.hold
    while opened and time.monotonic() < deadline:
        write_state(args.state, opened=n_opened, open=len(opened), refused=refused, closed=closed,
                    lines_max=lines_max)
        time.sleep(args.interval)
        still = []
        for c in opened:
            try:
                c[0].recv(1024, socket.MSG_PEEK)
                gone = True  # EOF or data: the server ended it
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if not gone:
                try:
                    c[0].send(b"X-Slow-%d: 1\r\n" % c[1])
                    c[1] += 1
                    lines_max = max(lines_max, c[1])
                except OSError:
                    gone = True
            if gone:
                closed += 1
                c[0].close()
            else:
                still.append(c)
        opened = still
    write_state(args.state, opened=n_opened, open=len(opened), refused=refused, closed=closed,
                lines_max=lines_max)
    for c in opened:
        c[0].close()


if __name__ == "__main__":
    main()
