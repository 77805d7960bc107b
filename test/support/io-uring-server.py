"""A workload CRIU cannot dump: it holds an io_uring instance (CRIU has no support for one, so
its dump fails with its own error), and serves HTTP otherwise.

Usage: python3 io-uring-server.py ADDRESS PORT
"""
import ctypes
import http.server
import sys

SYS_io_uring_setup = 425
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
ring = libc.syscall(SYS_io_uring_setup, 8, params)
if ring < 0:
    sys.exit(f"io_uring_setup: errno {ctypes.get_errno()}")
print(f"io-uring-server: ring fd {ring}", flush=True)
sys.argv = [sys.argv[0], sys.argv[2], "--bind", sys.argv[1]]
http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port=int(sys.argv[1]), bind=sys.argv[3])
