# Scrape cost at N spliced connections (run by scrape_at_scale.sh): /metrics time, and the
# latency of a 64 B ping-pong and of new connections, quiet and while /metrics is scraped every
# 100 ms. The daemon listens on 127.0.0.1:18080 (backend 127.0.0.1:18081, served here), admin 19090.
import asyncio, socket, sys, threading, time, urllib.request, statistics
N = int(sys.argv[1]); ROUNDS = 10000; NEW = 400
async def echo(r, w):
    try:
        while True:
            b = await r.read(65536)
            if not b: break
            w.write(b); await w.drain()
    except BaseException: pass
    try: w.close()
    except BaseException: pass
def scrape():
    t = time.perf_counter()
    with urllib.request.urlopen("http://127.0.0.1:19090/metrics") as f: body = f.read()
    return time.perf_counter() - t, body
def pingpong(results, stop_scraper):
    s = socket.create_connection(("127.0.0.1", 18080)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * 64; lat = []
    for _ in range(200): s.sendall(msg); s.recv(64)
    for _ in range(ROUNDS):
        t = time.perf_counter(); s.sendall(msg); got = b""
        while len(got) < 64: got += s.recv(64 - len(got))
        lat.append((time.perf_counter() - t) * 1e6)
    s.close(); results.extend(lat); stop_scraper.set()
def newconns(results, stop_scraper):
    for _ in range(NEW):
        t = time.perf_counter()
        s = socket.create_connection(("127.0.0.1", 18080)); s.sendall(b"y" * 64); got = b""
        while len(got) < 64: got += s.recv(64 - len(got))
        s.close(); results.append((time.perf_counter() - t) * 1e6)
    stop_scraper.set()
def scraper(stop, times):
    while not stop.is_set():
        d, _ = scrape(); times.append(d * 1000); time.sleep(0.1)
async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 18081, backlog=4096)
    conns = []
    for i in range(N):
        r, w = await asyncio.open_connection("127.0.0.1", 18080)
        conns.append(w)
        if i % 500 == 499: await asyncio.sleep(0.05)
    await asyncio.sleep(2)
    loop = asyncio.get_running_loop()
    d, body = await loop.run_in_executor(None, scrape)
    entries = [l for l in body.decode().splitlines() if l.startswith("agent_proxy_kernel_map_entries{")]
    alone = []
    for _ in range(10):
        d, _ = await loop.run_in_executor(None, scrape); alone.append(d * 1000)
    for work, label in ((pingpong, f"ping-pong 64 B x{ROUNDS}"), (newconns, f"new connection + 64 B echo x{NEW}")):
        for mode in ("quiet", "scraped"):
            lat, times, stop = [], [], threading.Event()
            th = [threading.Thread(target=work, args=(lat, stop))]
            if mode == "scraped": th.append(threading.Thread(target=scraper, args=(stop, times)))
            for t in th: t.start()
            while any(t.is_alive() for t in th): await asyncio.sleep(0.05)
            lat.sort()
            p = lambda q: lat[int(q * (len(lat) - 1))]
            print(f"{mode:8} {label}: p50 {p(0.5):.0f} us  p99 {p(0.99):.0f} us  p99.9 {p(0.999):.0f} us  max {lat[-1]:.0f} us" + (f"  ({len(times)} scrapes, median {statistics.median(times):.0f} ms)" if times else ""))
    print(f"/metrics alone at {N} connections: median {statistics.median(alone):.0f} ms, max {max(alone):.0f} ms")
    print("  " + "  ".join(e.split("{")[1] for e in entries[:4]))
    for w in conns: w.close()
    server.close()
    await asyncio.sleep(1)
asyncio.run(main())
