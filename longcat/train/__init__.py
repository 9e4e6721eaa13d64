"""Full finetuning of the LongCat-Video DiT with FSDP2: data, objective, parallelism, checkpoints, loop."""
