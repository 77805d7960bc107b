{
  "targets": [
    {
      "target_name": "bpfmap",
      "sources": ["bpfmap.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror", "-std=gnu11"]
    }
  ]
}
