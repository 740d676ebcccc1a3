# FineWeb-Edu reference for config/fineweb_inherit_gpt2_medium.py (arXiv 2404.08634, Sec. 5, training without
# data repetition; Table 1's zero-shot results): a 24-layer GPT-2 medium shape from scratch, 100K steps on FineWeb-Edu
# sample-100BT. Compute: ~1.5e19 FLOPs (~10 H100-hours at 40% MFU).
# The paper reports the training loss (log.jsonl's `loss`: each step's windows are read for the first time, so it is a
# held-out loss too) and zero-shot ARC-E, PIQA, SciQ, HellaSwag (acc_norm) and LAMBADA:
#   python evaluate.py --model=out-fineweb-scratch-gpt2-medium --tasks=paper
# This row's numbers: not read here (no copy of the paper's tables was available).
# Sources: 100K steps, 61,440 tokens per step, no data repetition (sampling='epochs'), AdamW beta2 = 0.95: the paper
# (Sec. 5 and its FineWeb-Edu loss figure; the released fineweb_large.py sets beta2 = 0.999, the paper 0.95, followed
# here). Scaled attention logits and weight decay on Linear weights only: the released code. Peak and final learning
# rate, warmup, weight decay and clipping of these runs: not stated in the sources read here; the OpenWebText
# configs' values (config/scratch_gpt2_medium.py).
#
#   python prepare_owt.py --dataset=HuggingFaceFW/fineweb-edu --subset=sample-100BT --out_dir=data/fineweb_edu_100bt
#   torchrun --standalone --nproc_per_node=4 train.py config/fineweb_scratch_gpt2_medium.py
out_dir = 'out-fineweb-scratch-gpt2-medium'
init_from = 'scratch'
n_layer = 24
n_head = 16
n_embd = 1024
vocab_size = 50304
bias = False
scale_attn_by_inverse_layer_idx = True
dataset = 'fineweb_edu_100bt'
sampling = 'epochs'         # every window once per epoch, in a seeded order: 6.1B tokens, no window read twice
# 15 x 1024 x 4 = 61,440 tokens per step (the paper's); 4 accumulation steps: 1, 2 or 4 GPUs
batch_size = 15
block_size = 1024
gradient_accumulation_steps = 4
max_iters = 100000
lr_decay_iters = 100000
learning_rate = 3e-4
min_lr = 1e-5
warmup_iters = 2000
weight_decay = 0.1
decay_embeddings = False   # Linear weights only
beta1 = 0.9
beta2 = 0.95                # the paper's (the released fineweb_large.py: 0.999)
grad_clip = 1.0
dropout = 0.0
eval_interval = 2000
eval_iters = 200
wandb_project = 'inheritune'
wandb_run_name = 'fineweb-scratch-gpt2-medium'
