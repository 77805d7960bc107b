"""A workload that keeps state in SysV shared memory (as PostgreSQL does): a segment filled with
a seeded pattern, mapped by this process and a child it forks; GET / answers the SHA-256 the
pattern should have and the one the mapped memory has now, and the segment's id.

Usage: python3 shm-server.py ADDRESS PORT BYTES
"""
import ctypes
import hashlib
import http.server
import json
import os
import random
import signal
import sys

address, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
shmid = libc.shmget(IPC_PRIVATE, size, IPC_CREAT | 0o600)
if shmid < 0:
    sys.exit(f"shmget: errno {ctypes.get_errno()}")
addr = libc.shmat(shmid, None, 0)
pattern = random.Random(20261201).randbytes(size)
ctypes.memmove(addr, pattern, size)
expected = hashlib.sha256(pattern).hexdigest()
del pattern

# A second process of the tree maps the same segment (inherited across fork) and sleeps.
if os.fork() == 0:
    signal.pause()
    os._exit(0)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        actual = hashlib.sha256(ctypes.string_at(addr, size)).hexdigest()
        body = json.dumps({"shmid": shmid, "expected": expected, "actual": actual}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


print(f"shm-server: segment {shmid}, {size} bytes, sha256 {expected}", flush=True)
http.server.HTTPServer((address, port), Handler).serve_forever()
