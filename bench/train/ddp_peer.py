#!/usr/bin/python3
"""The data-parallel peer of bench/train_bench.cc: torch DistributedDataParallel with the gloo
backend, --world ranks as processes on this machine, each with --threads ATen threads (1 by
default) and torch_peer.py's model, rows and optimizer. Rank r trains on rows r*b .. r*b+b-1 of
every step (b = --micro-batch), so the job trains world*b rows a step.

Takes torch_peer.py's flags plus --world and --port. Prints one JSON object (from rank 0) on the
last line of stdout: tokens_per_s counts the rows of every rank.

Ends with a barrier rather than destroy_process_group, which can hang in torch 1.13.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import torch_peer


def run_rank(rank, a, result_queue):
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=rank, world_size=a.world)
    model = torch_peer.make_model(a)  # same seed on every rank; DDP broadcasts rank 0's anyway
    ddp = DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
    rows = torch_peer.Rows(a, shard=rank, shards=a.world)
    # Every rank starts each timed step together, so step times are the job's.
    dist.barrier()
    losses, seconds, cpu_seconds = torch_peer.train_steps(a, ddp, rows, optimizer, params)
    dist.barrier()
    if rank == 0:
        tokens = a.micro_batch * a.seq * a.world
        result_queue.put({
            "peer": "torch-ddp-gloo", "torch": torch.__version__, "world": a.world,
            "threads_per_rank": torch.get_num_threads(), "parameters": sum(p.numel() for p in params),
            "tokens_per_step": tokens, "step_seconds": seconds,
            "tokens_per_s": tokens * len(seconds) / sum(seconds),
            # rank 0's own rows per second of rank 0's CPU time
            "tokens_per_cpu_s": a.micro_batch * a.seq * len(seconds) / cpu_seconds, "losses": losses,
        })


def main():
    argv = sys.argv[1:]
    world, port = 2, 29511
    rest = []
    i = 0
    while i < len(argv):
        if argv[i] == "--world":
            world = int(argv[i + 1])
            i += 2
        elif argv[i] == "--port":
            port = int(argv[i + 1])
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    if "--threads" not in rest:
        rest += ["--threads", "1"]
    a = torch_peer.parse_args(rest)
    a.world, a.port = world, port
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(run_rank, args=(a, queue), nprocs=world, join=True, start_method="spawn")
    print(json.dumps(queue.get()))


if __name__ == "__main__":
    main()
