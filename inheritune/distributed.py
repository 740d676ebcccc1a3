"""The processes of a run: one plain process, DDP, or FSDP2 under torchrun. Everything that knows about ranks lives
here (process groups and their timeouts, collectives, wrapping and sharding models (FSDP), gathering them back,
rank-0 loading), so train.py reads as the recipe it runs.

    procs = Processes(device="cuda", fsdp=True, ...)   # joins torchrun's process group (if any)
    model = procs.wrap(raw_model)                        # compiled / DDP-wrapped / sharded, as configured
"""

import faulthandler
import os
import sys
from contextlib import nullcontext
from dataclasses import asdict
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from inheritune.checkpoint import empty_model
from model import GPT


def is_master():
    """Rank 0, or the only process: it prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def fail(message):
    """A user error: rank 0 says what was wrong and what to do, every rank leaves its process group and exits 1."""
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(f"error: {message}" if is_master() else 1)


def sum_over_processes(values):
    """values (a tensor) summed over the processes (a collective, in place); itself with one process."""
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


def share_from_rank0(values):
    """Rank 0's values (picklable) on every rank."""
    if not dist.is_initialized():
        return values
    box = [values]
    try:
        dist.broadcast_object_list(box, src=0)
    except (RuntimeError, dist.DistError):
        if is_master():
            raise
        sys.exit(1)  # rank 0 stopped first (with its error message) and torchrun stops the others
    return box[0]


def gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (a collective: every rank must call it)."""
    if not dist.is_initialized():
        return [obj]
    objs = [None] * dist.get_world_size()
    dist.all_gather_object(objs, obj)
    return objs


def finish():
    """Leave the process group after a run that went to its end; exit 0."""
    if dist.is_initialized():
        gloo = dist.get_backend() == "gloo"
        dist.destroy_process_group()
        if gloo:
            # PyTorch's gloo now and then aborts in its C++ teardown at interpreter exit, after all work is done
            # (3 runs in 60 of a minimal DDP script on CPU), and torchrun then reports a failed run: leave first
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    sys.exit(0)


def shape_of(config):
    """A GPT of config on the meta device: its shape without memory (what FSDP ranks other than 0 build)."""
    with torch.device("meta"):
        return GPT(config)


def checkpoint_activations(model):
    """Per-block activation checkpointing: the same numbers; less memory, about a third more compute."""
    for block in model.transformer.h:
        def checkpointed(*args, forward=block.forward):  # a function, not a partial: torch.compile traces it
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False)
        block.forward = checkpointed


def init_process_group(backend, rank, world_size, timeout_s):
    """The process group of this torchrun launch, failing after timeout_s when a peer died or never came. On one node
    each restart gets its own key prefix in torchrun's agent store, else it can read the dead group's addresses
    (pytorch/pytorch#135712); across nodes, use TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1."""
    timeout, env = timedelta(seconds=timeout_s), os.environ
    # gloo's connection set-up can wait past the timeout it is given (seen: minutes in Pair::waitUntilConnected
    # with a 30 s timeout): then faulthandler's watchdog thread, which needs no GIL, prints where and exits
    faulthandler.dump_traceback_later(timeout_s + min(timeout_s, 60), exit=True)
    try:
        if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and env.get("LOCAL_WORLD_SIZE") == env["WORLD_SIZE"]:
            agent = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout)
            store = dist.PrefixStore(f"inheritune/restart{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout)
    except (RuntimeError, dist.DistError) as e:  # a peer that never came, an address that does not answer
        message = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        sys.exit(f"error: rank {rank}: the process group was not set up within dist_timeout_s={timeout_s} "
                 f"({message})")
    faulthandler.cancel_dump_traceback_later()


class FSDP:
    """FSDP2 as torchtitan applies it, over all processes (a 1-D mesh) or over groups of shard_size processes,
    replicated (2-D: HSDP): parameters gathered in param_dtype for compute, gradients reduced in float32; the shards
    in CPU memory with cpu_offload."""

    def __init__(self, device, world_size, shard_size, param_dtype, cpu_offload):
        from torch.distributed.device_mesh import init_device_mesh

        self.device, self.device_type = device, torch.device(device).type
        self.param_dtype, self.cpu_offload = param_dtype, cpu_offload
        shard_size = shard_size or world_size
        mesh = init_device_mesh(self.device_type, (world_size // shard_size, shard_size),
                                mesh_dim_names=("replicate", "shard"))
        self.mesh = mesh["shard"] if shard_size == world_size else mesh

    def __str__(self):
        return f"FSDP over a {' x '.join(map(str, self.mesh.shape))} mesh {self.mesh.mesh_dim_names}"

    def shard(self, raw_model, weights=True, training=True, compile=False, activation_checkpointing=False):
        """raw_model sharded with fully_shard per block (checkpointed, compiled), then the root; rank 0's weights sent
        to every rank's shards (weights=False: read from a sharded checkpoint afterwards)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        model = shape_of(raw_model.config)
        offload = CPUOffloadPolicy(pin_memory=self.device_type == "cuda") if self.cpu_offload else OffloadPolicy()
        settings = dict(mesh=self.mesh, offload_policy=offload,
                        mp_policy=MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=torch.float32))
        if activation_checkpointing:
            checkpoint_activations(model)
        for block in model.transformer.h:
            if compile:
                block.compile()
            fully_shard(block, **settings)
        fully_shard(model, **settings, reshard_after_forward=None if training else True)  # frozen: no backward
        model.to_empty(device="cpu" if self.cpu_offload else self.device)
        if weights:
            set_model_state_dict(model, raw_model.state_dict() if is_master() else {},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return model

    def full_model(self, model):
        """The whole sharded model gathered into rank 0's CPU memory (a collective); its shape on the other ranks."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        with torch.device("cpu"):  # not the meta device of shapes_only(), which a caller may be inside
            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not is_master():
            return shape_of(model.config)
        full = empty_model(asdict(model.config))
        full.load_state_dict(state)
        return full


class Processes:
    """This process's place in the run (rank, world size, device) and the operations that depend on it."""

    def __init__(self, device, dtype="auto", backend="auto", timeout_s=600, fsdp=False, fsdp_shard_size=0,
                 fsdp_cpu_offload=False, compile=False, activation_checkpointing=False):
        self.ddp = "RANK" in os.environ  # launched by torchrun (DDP, or FSDP with fsdp=True)
        sharded = fsdp and self.ddp
        self.compile, self.activation_checkpointing = compile, activation_checkpointing
        self.master = is_master()
        if self.ddp:
            self.rank, self.local_rank, self.world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK",
                                                                                        "WORLD_SIZE"))
            if device.startswith("cuda"):
                device = f"cuda:{self.local_rank}"
                torch.cuda.set_device(device)
            name = ("nccl" if device.startswith("cuda") else "gloo") if backend == "auto" else backend
            if name == "nccl" and sharded and fsdp_cpu_offload:  # offloaded shards: clipping reduces CPU tensors
                name = "cpu:gloo,cuda:nccl"
            init_process_group(name, self.rank, self.world_size, timeout_s)
        else:
            self.rank, self.local_rank, self.world_size = 0, 0, 1
        self.device = device
        self.device_type = "cuda" if device.startswith("cuda") else "mps" if device.startswith("mps") else "cpu"
        if dtype == "auto":
            cuda_bf16 = self.device_type == "cuda" and torch.cuda.is_bf16_supported()
            dtype = "bfloat16" if cuda_bf16 else "float16" if self.device_type == "cuda" else "float32"
        if sharded and dtype == "float16":
            fail("dtype=auto is float16 on this GPU, which has no bfloat16, and fsdp=True cannot train in float16: "
                 "pass --dtype=float32")
        self.dtype, self.ptdtype = dtype, getattr(torch, dtype)
        # the processes FSDP shards over and how (None: no FSDP)
        self.fsdp = FSDP(device, self.world_size, fsdp_shard_size, self.ptdtype, fsdp_cpu_offload) if sharded else None
        # where models are built: under FSDP rank 0 holds the only full copy, in CPU memory, until wrap() shards it
        self.build_device = device if not sharded else "cpu" if self.master else "meta"
        # FSDP casts the gathered parameters itself (MixedPrecisionPolicy); elsewhere autocast does
        plain = dtype == "float32" or sharded
        self.autocast = nullcontext() if plain else torch.autocast(device_type=self.device_type, dtype=self.ptdtype)

    def describe(self):
        return f"{self.world_size} process(es)" + (f"; {self.fsdp}" if self.fsdp else "")

    def shapes_only(self):
        """Under FSDP, where ranks other than 0 build models: on the meta device (rank 0 builds the weights alone)."""
        return torch.device("meta") if self.fsdp and not self.master else nullcontext()

    def on_rank0(self, build):
        """build() (an object with .config); under FSDP on rank 0 only, the others get its shape on the meta device."""
        if not self.fsdp:
            return build()
        built = build() if self.master else None
        config = share_from_rank0(built.config if self.master else None)
        return built if self.master else shape_of(config)

    def wrap(self, raw_model, weights=True):
        """The module the training step calls: raw_model compiled and/or DDP-wrapped, or under FSDP sharded."""
        if self.fsdp:
            return self.fsdp.shard(raw_model, weights, compile=self.compile,
                                   activation_checkpointing=self.activation_checkpointing)
        if self.activation_checkpointing:
            checkpoint_activations(raw_model)
        model = torch.compile(raw_model) if self.compile else raw_model
        if self.ddp:
            model = DDP(model, device_ids=[self.local_rank] if self.device_type == "cuda" else None)
        return model

    def unwrapped(self, model, raw_model):
        """The module whose parameters the optimizer steps: FSDP shards in place (no wrapper), else raw_model."""
        return model if self.fsdp else raw_model

    def frozen(self, raw_model, compiled=True):
        """A model that only runs forward (a teacher; a reference measured once: compiled=False), on this device or
        sharded; compiled if compile=True and compiled."""
        if self.fsdp:
            with torch.random.fork_rng(devices=[]):
                return self.fsdp.shard(raw_model, training=False, compile=compiled and self.compile)
        model = raw_model.to(self.device)
        return torch.compile(model) if self.compile and compiled else model

    def full_model(self, model):
        return self.fsdp.full_model(model) if self.fsdp else model

    def no_sync_unless(self, model, last_micro_step):
        """Gradients are reduced over the processes only on the last micro-step (until then they accumulate)."""
        if self.fsdp:  # reduce-scatter after the last micro-step only
            model.set_requires_gradient_sync(last_micro_step)
            model.set_is_last_backward(last_micro_step)
        elif self.ddp:
            model.require_backward_grad_sync = last_micro_step

    def clip_gradients(self, parameters, max_norm):
        """Scale the gradients down to a total norm of max_norm if above it; returns the total norm before."""
        parameters = list(parameters)
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        if self.fsdp:  # a DTensor: the whole gradient's norm, from every rank's shards
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
        return norm
