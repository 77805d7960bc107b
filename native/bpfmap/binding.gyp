{
  "targets": [
    {
      "target_name": "bpfmap",
      "sources": ["bpfmap.c", "held.c", "conn_table.c", "test_run.c"],
      "include_dirs": ["../../bpf"],
      "defines": ["NAPI_VERSION=8"],
      "libraries": ["-lpthread"],
      "cflags": ["-O2", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror", "-std=gnu11"]
    }
  ]
}
