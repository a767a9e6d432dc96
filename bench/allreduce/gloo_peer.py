#!/usr/bin/python3
"""The gloo peer of bench/allreduce_bench.cc: torch.distributed all_reduce of float32 between two
processes on this machine, timed the same way as Cairn's ring (a barrier, then one all_reduce).

    /usr/bin/python3 bench/allreduce/gloo_peer.py --mib 64 --iterations 10 --warmup 2

Launches the two ranks itself and prints one JSON line from rank 0:
    {"torch": "1.13.0", "bytes": ..., "seconds": [per-iteration wall times],
     "cpu_seconds": CPU time (user + system, all threads) of both ranks over the timed iterations}
Run with Debian's python3-torch (/usr/bin/python3). The ranks end with a barrier and os._exit rather
than destroy_process_group, which can hang in torch 1.13.
"""
import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_now():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_rank(args):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank, world_size=2)
    count = args.mib * (1 << 20) // 4
    data = torch.full((count,), 1e-3, dtype=torch.float32)
    seconds = []
    cpu_start = 0.0
    for i in range(args.warmup + args.iterations):
        dist.barrier()
        if i == args.warmup:
            cpu_start = cpu_now()
        start = time.perf_counter()
        dist.all_reduce(data)
        took = time.perf_counter() - start
        if i >= args.warmup:
            seconds.append(took)
    cpu = torch.tensor([cpu_now() - cpu_start], dtype=torch.float64)
    dist.all_reduce(cpu)
    dist.barrier()
    if args.rank == 0:
        print(json.dumps({"torch": torch.__version__, "bytes": count * 4, "seconds": seconds,
                          "cpu_seconds": cpu.item()}), flush=True)
    os._exit(0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=-1, help="internal: run one rank")
    parser.add_argument("--port", type=int, default=0, help="internal: the rendezvous port")
    args = parser.parse_args()
    if args.rank >= 0:
        run_rank(args)
        return
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "2")
    port = free_port()
    common = [sys.executable, os.path.abspath(__file__), "--mib", str(args.mib), "--iterations", str(args.iterations),
              "--warmup", str(args.warmup), "--port", str(port)]
    ranks = [subprocess.Popen(common + ["--rank", str(r)], env=env, stdout=subprocess.PIPE if r == 0 else None)
             for r in range(2)]
    out, _ = ranks[0].communicate()
    codes = [ranks[0].returncode, ranks[1].wait()]
    if codes != [0, 0]:
        sys.exit(f"gloo_peer: ranks exited with {codes}")
    sys.stdout.write(out.decode())


if __name__ == "__main__":
    main()
