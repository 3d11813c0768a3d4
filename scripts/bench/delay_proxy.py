#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that delays every byte by a fixed time in each direction, keeping
order: a server across a network, for measuring what round trips cost.

    delay_proxy.py LISTEN_PORT TARGET_PORT ONE_WAY_MS

Threads, not asyncio: an event loop's timers round waits up to whole milliseconds, a thread's
sleep is precise to tens of microseconds.
"""
import queue
import socket
import sys
import threading
import time


def forward(src, dst, delay):
    """Reads src, and sends each chunk to dst `delay` seconds after it arrived."""
    pending = queue.Queue()

    def sender():
        while True:
            due, data = pending.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                break
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    while True:
        try:
            data = src.recv(65536)
        except OSError:
            data = b""
        if not data:
            break
        pending.put((time.monotonic() + delay, data))
    pending.put((0, None))
    t.join()


def serve(client, target, delay):
    try:
        server = socket.create_connection(("127.0.0.1", target))
    except OSError:
        client.close()
        return
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up = threading.Thread(target=forward, args=(client, server, delay), daemon=True)
    up.start()
    forward(server, client, delay)
    up.join()
    client.close()
    server.close()


def main():
    listen, target, one_way_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", listen))
    lsock.listen(64)
    while True:
        client, _ = lsock.accept()
        threading.Thread(target=serve, args=(client, target, one_way_ms / 1000.0), daemon=True).start()


if __name__ == "__main__":
    main()
