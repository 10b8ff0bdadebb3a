"""The process behind MockCluster: creates librdkafka's mock cluster through librdkafka's
C API (which confluent-kafka does not wrap), prints its bootstrap servers, then serves topic
commands read from stdin, one JSON list per line, until stdin closes."""

from __future__ import annotations

import ctypes
import glob
import json
import os
import sys
from typing import IO


def _librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka itself loaded (its mock API is not in Python)."""
    import confluent_kafka

    base = os.path.dirname(os.path.dirname(confluent_kafka.__file__))
    found = sorted(glob.glob(os.path.join(base, "confluent_kafka.libs", "librdkafka*.so*")))
    lib = ctypes.CDLL(found[0] if found else "librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    lib.rd_kafka_mock_topic_create.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.rd_kafka_mock_topic_delete.restype = ctypes.c_int
    lib.rd_kafka_mock_topic_delete.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    return lib


def _serve(brokers: int, inp: IO[str], out: IO[str]) -> None:
    lib = _librdkafka()
    errstr = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    lib.rd_kafka_conf_set(conf, b"log_level", b"3", errstr, len(errstr))  # no notices
    rk = lib.rd_kafka_new(0, conf, errstr, len(errstr))
    if not rk:
        out.write(f"error {errstr.value.decode()}\n")
        out.flush()
        return
    cluster = lib.rd_kafka_mock_cluster_new(rk, brokers)
    if not cluster:
        out.write("error rd_kafka_mock_cluster_new failed\n")
        out.flush()
        return
    out.write(f"bootstrap {lib.rd_kafka_mock_cluster_bootstraps(cluster).decode()}\n")
    out.flush()
    replicas = min(3, brokers)
    for line in inp:
        cmd, *args = json.loads(line)
        if cmd == "create":
            err = lib.rd_kafka_mock_topic_create(cluster, args[0].encode(), args[1], replicas)
        elif cmd == "delete":
            err = lib.rd_kafka_mock_topic_delete(cluster, args[0].encode())
        else:
            out.write(f"error unknown command {cmd!r}\n")
            out.flush()
            continue
        out.write("ok\n" if err == 0 else f"error {lib.rd_kafka_err2str(err).decode()}\n")
        out.flush()
    # stdin closed: the parent is done (or dead). Exit without tearing the cluster down: the
    # process ends, and with it every socket.


if __name__ == "__main__":
    try:
        import ctypes as _c

        _c.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: die with the parent
    except Exception:
        pass
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else 3, sys.stdin, sys.stdout)
    sys.stdout.flush()
    os._exit(0)
