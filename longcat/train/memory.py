"""What training keeps in memory and on disk: bytes per parameter of the training state, a checkpoint's
bytes, and the estimated peak memory of one GPU by part (so that a user sees which knob, the weight
average included, moves which)."""

from __future__ import annotations

GIB = 1024**3

# Bytes per parameter of the training state: FSDP2 keeps the sharded parameters in fp32 (master weights,
# also under bf16 compute), with fp32 gradients and AdamW's two fp32 moments, and with train.ema_decay an
# fp32 weight average sharded like them. A checkpoint holds the weights, the moments and the average; the
# exported model is bf16.
MASTER_WEIGHT_BYTES = 4
GRADIENT_BYTES = 4
ADAM_MOMENT_BYTES = 8
AVERAGE_BYTES = 4
EXPORTED_WEIGHT_BYTES = 2

# bf16 bytes kept per token per block for backward without checkpointing (norm outputs in fp32,
# qkv, q/k after norm and RoPE, attention output, cross-attention, the four SwiGLU tensors);
# an estimate to be checked against a measured peak (bench/bench_train_gpu.py).
ACTIVATION_BYTES_PER_TOKEN_WIDTH = 60


def checkpoint_bytes(num_params: int, average: bool = False) -> int:
    """Tensor bytes of one resumable checkpoint (DCP, all ranks' shards together): the fp32 master
    weights, both AdamW moments, and the weight average when the run keeps one. Gradients are not saved;
    RNG states and counters are negligible."""
    return num_params * (MASTER_WEIGHT_BYTES + ADAM_MOMENT_BYTES + (AVERAGE_BYTES if average else 0))


def memory_per_gpu(
    counts: dict[str, int],
    hidden: int,
    depth: int,
    tokens: int,
    world_size: int,
    batch_size: int,
    activation_checkpointing: str,
    checkpoint_every: int = 2,
    cpu_offload: bool = False,
    bf16: bool = True,
    average: bool = False,
) -> dict[str, float]:
    """Estimated peak bytes on one GPU, by part (GiB); `average`: the run keeps a weight average."""
    from longcat.train.parallelize import checkpointed_block_indices  # torch: only when memory is asked

    total = counts["total"]
    compute_bytes = 2 if bf16 else 4
    # fp32 master weights, fp32 gradients, two fp32 AdamW moments and the weight average, all sharded.
    state_bytes = MASTER_WEIGHT_BYTES + GRADIENT_BYTES + ADAM_MOMENT_BYTES + (AVERAGE_BYTES if average else 0)
    sharded_states = 0 if cpu_offload else state_bytes * total / world_size
    # Unsharded compute copies: the current block, the prefetched next one, and the root's own weights,
    # plus one block's unsharded gradients before reduce-scatter.
    working_params = (2 * counts["block"] + counts["embedders"] + counts["final"]) * compute_bytes
    working_grads = counts["block"] * (compute_bytes + 4)
    checkpointed = len(checkpointed_block_indices(depth, activation_checkpointing, checkpoint_every))
    full_block = ACTIVATION_BYTES_PER_TOKEN_WIDTH * tokens * hidden * batch_size
    block_input = tokens * hidden * compute_bytes * batch_size
    activations = checkpointed * block_input + (depth - checkpointed) * full_block
    if activation_checkpointing == "selective":
        # Kept self-attention output plus its fp32 logsumexp per head (head width 128), per block.
        activations += (
            checkpointed * batch_size * (tokens * hidden * compute_bytes + tokens * (hidden // 128) * 4)
        )
    if checkpointed:
        activations += full_block  # one block recomputed at a time in backward
    # Output, target and loss in fp32 plus allocator slack.
    workspace = 3 * tokens * 64 * 4 * batch_size + 2 * GIB
    parts = {
        "sharded_states": sharded_states,
        "working_params": working_params + working_grads,
        "activations": activations,
        "workspace": workspace,
    }
    parts = {key: value / GIB for key, value in parts.items()}
    parts["total"] = sum(parts.values())
    return parts
