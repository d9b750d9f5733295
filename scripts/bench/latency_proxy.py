#!/usr/bin/env python3
"""A TCP proxy on loopback that holds every chunk a client sends for a fixed delay.

Used by scripts/bench/scale.sh to put a loopback S3 server at the distance of a real one:
an S3 GET from inside its region answers in tens of milliseconds, a loopback server in
well under one, so a client that reads one object at a time looks fast on loopback and is
slow on S3. With the delay, only requests kept in flight hide it, as on S3.

    latency_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS

Each request (one chunk from the client, as an HTTP request head with a small body is)
waits DELAY_MS before it is forwarded; answers pass straight back. Connections are
independent, so N requests in flight wait DELAY_MS together, not N times.
"""

import asyncio
import sys


async def pipe(reader, writer, delay):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if delay:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main(listen, target, delay):
    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            pipe(client_r, server_w, delay), pipe(server_r, client_w, 0.0)
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000.0))
