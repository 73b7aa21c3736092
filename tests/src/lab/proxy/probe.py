"""The proxy lab's servers and clients (python3, standard library only).

serve NAME PORT: TCP and UDP (and SCTP when the kernel has it) on PORT, dual stack. Every TCP
connection gets the line `NAME PEER_IP PEER_PORT`, again for every line it sends; every UDP
datagram gets the same line back.

Clients print one JSON object per line:
  tcp HOST PORT [--count N] [--sport P] [--src A] [--timeout S] [--proto tcp|sctp]
      {"answer": "...", "peer": "ip port", "error": null, "ms": 1.2} per connection
  udp HOST PORT [--count N] [--connected] [--src A] [--timeout S]
  hold HOST PORT N CONTROL [--timeout S] [--udp]: opens N connections (or N connected UDP
      sockets), reads the greeting, prints {"opened": k, "errors": [...], "answers": [the
      distinct backend names]}, then every time the file
      CONTROL.K appears (K = 1, 2, ...) sends a line on each and prints
      {"round": K, "ok": k, "errors": [...]}; ends when CONTROL.stop appears.
  until HOST PORT DEADLINE_S [--want NAME]: connects every 20 ms until an answer (from NAME)
      comes; prints {"answer": ..., "ms": time to it} or {"error": "deadline"}.
"""
import errno
import json
import os
import resource
import selectors
import socket
import sys
import threading
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def fam(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def peer_text(addr):
    host = addr[0]
    if host.startswith("::ffff:"):
        host = host[len("::ffff:"):]
    return f"{host} {addr[1]}"


def err_text(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno))
    return str(e)


# ---------------------------------------------------------------- servers


def serve(name, port):
    raise_nofile()
    threads = []
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.bind(("::", port))
    tcp.listen(4096)
    threads.append(threading.Thread(target=serve_stream, args=(name, tcp), daemon=True))
    try:
        sctp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
        sctp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sctp.bind(("::", port))
        sctp.listen(128)
        threads.append(threading.Thread(target=serve_stream, args=(name, sctp), daemon=True))
    except OSError:
        pass
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", port))
    threads.append(threading.Thread(target=serve_udp, args=(name, udp), daemon=True))
    for t in threads:
        t.start()
    print(f"serving {name} on {port}", flush=True)
    while True:
        time.sleep(3600)


def serve_stream(name, listener):
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    conn, addr = listener.accept()
                except OSError:
                    continue
                line = f"{name} {peer_text(addr)}\n".encode()
                try:
                    conn.setblocking(False)
                    conn.send(line)
                    sel.register(conn, selectors.EVENT_READ, line)
                except OSError:
                    conn.close()
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn)
                conn.close()
                continue
            try:
                conn.send(key.data * data.count(b"\n"))
            except OSError:
                pass


def serve_udp(name, sock):
    while True:
        data, addr = sock.recvfrom(65536)
        try:
            sock.sendto(f"{name} {peer_text(addr)}\n".encode(), addr)
        except OSError:
            pass


# ---------------------------------------------------------------- clients


def opts(args, defaults):
    out = dict(defaults)
    i = 0
    rest = []
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            key = a[2:]
            if isinstance(defaults.get(key), bool):
                out[key] = True
                i += 1
                continue
            out[key] = type(defaults[key])(args[i + 1]) if defaults.get(key) is not None else args[i + 1]
            i += 2
        else:
            rest.append(a)
            i += 1
    return rest, out


def stream_socket(host, o):
    proto = socket.IPPROTO_SCTP if o["proto"] == "sctp" else 0
    s = socket.socket(fam(host), socket.SOCK_STREAM, proto)
    if proto == 0:
        # RST on close: no TIME_WAIT, so a fixed source port is reusable at once.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if o["src"] or o["sport"]:
        s.bind((o["src"] or ("::" if fam(host) == socket.AF_INET6 else "0.0.0.0"), o["sport"]))
    s.settimeout(o["timeout"])
    return s


def read_line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise OSError(errno.ECONNRESET, "closed before a full line")
        buf += chunk
    return buf.decode().strip()


def tcp_once(host, port, o):
    t0 = time.monotonic()
    res = {"answer": None, "peer": None, "error": None}
    s = None
    try:
        s = stream_socket(host, o)
        s.connect((host, port))
        res["peer"] = peer_text(s.getpeername())
        res["answer"] = read_line(s)
    except Exception as e:  # noqa: BLE001 - every failure is a result
        res["error"] = err_text(e)
    finally:
        if s is not None:
            s.close()
    res["ms"] = round((time.monotonic() - t0) * 1000, 2)
    return res


def tcp(args):
    rest, o = opts(args, {"count": 1, "sport": 0, "src": "", "timeout": 2.0, "proto": "tcp"})
    host, port = rest[0], int(rest[1])
    for _ in range(o["count"]):
        print(json.dumps(tcp_once(host, port, o)), flush=True)


def udp(args):
    rest, o = opts(args, {"count": 1, "connected": False, "src": "", "timeout": 2.0})
    host, port = rest[0], int(rest[1])
    for _ in range(o["count"]):
        t0 = time.monotonic()
        res = {"answer": None, "peer": None, "error": None}
        s = socket.socket(fam(host), socket.SOCK_DGRAM)
        s.settimeout(o["timeout"])
        try:
            if o["src"]:
                s.bind((o["src"], 0))
            if o["connected"]:
                s.connect((host, port))
                res["peer"] = peer_text(s.getpeername())
                s.send(b"ping\n")
                res["answer"] = s.recv(65536).decode().strip()
            else:
                s.sendto(b"ping\n", (host, port))
                data, addr = s.recvfrom(65536)
                res["answer"] = data.decode().strip()
                res["peer"] = peer_text(addr)
        except Exception as e:  # noqa: BLE001
            res["error"] = err_text(e)
        finally:
            s.close()
        res["ms"] = round((time.monotonic() - t0) * 1000, 2)
        print(json.dumps(res), flush=True)


def hold(args):
    raise_nofile()
    rest, o = opts(args, {"timeout": 5.0, "udp": False, "src": "", "sport": 0, "proto": "tcp"})
    host, port, n, control = rest[0], int(rest[1]), int(rest[2]), rest[3]
    socks, errors, answers = [], [], []
    # One deadline for the lot: a broken path fails the run in seconds, not N timeouts.
    deadline = time.monotonic() + max(o["timeout"], n * 0.05)
    for _ in range(n):
        if time.monotonic() > deadline:
            errors.append("deadline")
            continue
        try:
            if o["udp"]:
                s = socket.socket(fam(host), socket.SOCK_DGRAM)
                s.settimeout(o["timeout"])
                s.connect((host, port))
                s.send(b"ping\n")
                answers.append(s.recv(65536).decode().split()[0])
            else:
                s = stream_socket(host, o)
                s.connect((host, port))
                answers.append(read_line(s).split()[0])
            socks.append(s)
        except Exception as e:  # noqa: BLE001
            errors.append(err_text(e))
    print(json.dumps({"opened": len(socks), "errors": errors[:20], "answers": sorted(set(answers))}), flush=True)
    k = 1
    while True:
        if os.path.exists(control + ".stop"):
            return
        if not os.path.exists(f"{control}.{k}"):
            time.sleep(0.02)
            continue
        ok, errors, answers = 0, [], []
        # Send on all first, then read: one round trip for the lot, not one per socket.
        for s in socks:
            try:
                s.send(b"ping\n")
            except Exception as e:  # noqa: BLE001
                errors.append(err_text(e))
        deadline = time.monotonic() + o["timeout"]
        for s in socks:
            try:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                answers.append((s.recv(65536).decode() if o["udp"] else read_line(s)).split()[0])
                ok += 1
            except Exception as e:  # noqa: BLE001
                errors.append(err_text(e))
        print(json.dumps({"round": k, "ok": ok, "errors": errors[:20], "answers": sorted(set(answers))}), flush=True)
        k += 1


def until(args):
    rest, o = opts(args, {"want": "", "timeout": 0.3, "src": "", "sport": 0, "proto": "tcp"})
    host, port, deadline = rest[0], int(rest[1]), float(rest[2])
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < deadline:
        r = tcp_once(host, port, o)
        if r["answer"] and (not o["want"] or r["answer"].split()[0] == o["want"]):
            r["ms"] = round((time.monotonic() - t0) * 1000, 1)
            print(json.dumps(r), flush=True)
            return
        last = r
        time.sleep(0.02)
    print(json.dumps({"answer": None, "peer": None, "error": "deadline", "last": last}), flush=True)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], int(args[1]))
    elif cmd == "tcp":
        tcp(args)
    elif cmd == "udp":
        udp(args)
    elif cmd == "hold":
        hold(args)
    elif cmd == "until":
        until(args)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
