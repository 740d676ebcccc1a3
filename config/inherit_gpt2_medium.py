# Inheritune on GPT-2 medium (arXiv 2404.08634, Table 1 / App. F): inherit the first 12 of 24 blocks of the
# reference, train 100K steps, grow by 2 blocks per round (12 -> 14 -> 16) until the val loss reaches the
# reference's. Paper (OpenWebText, 100K steps): reference 24 layers 2.81, Inheritune 16 layers 2.81,
# 16 layers from scratch 2.86.
# Compute: one 100K-step round of the 16-layer model is ~6.8e19 FLOPs (~47 H100-hours at 40% MFU);
# the three rounds 12/14/16 take ~130 H100-hours, ~16 hours on 8 H100s.
# Sources: steps, batch, schedule and AdamW settings: the paper (App. F.2); weight decay on Linear weights only:
# the authors' released code (GPT2-experiments). The shape and scale_attn_by_inverse_layer_idx come from the
# reference: False in OpenAI's weights, True in ours (config/scratch_gpt2_*.py, as the authors trained theirs).
#
#   python prepare_owt.py                      # -> data/openwebtext
#   torchrun --standalone --nproc_per_node=8 train.py config/inherit_gpt2_medium.py
#
# reference: OpenAI's weights ('gpt2-medium', or a local folder of them on an offline cluster), or your own
# 24-layer model. The paper's own chain trains its reference first, then inherits from that out_dir:
#   torchrun --standalone --nproc_per_node=8 train.py config/scratch_gpt2_medium.py   # -> out-scratch-gpt2-medium
#   torchrun --standalone --nproc_per_node=8 train.py config/inherit_gpt2_medium.py --reference=out-scratch-gpt2-medium
out_dir = 'out-inherit-gpt2-medium'
init_from = 'inherit'
reference = 'gpt2-medium'
n_layer = 12                # l = L/2 inherited blocks to start with
grow_every = 100000         # T steps per round
grow_by = 2
grow_mode = 'restart'       # the paper's Algorithm 1: re-inherit l + 2 blocks, fresh optimizer and schedule
max_iters = 600000          # upper bound; the run stops when the target is reached (at most 6 rounds: 12..22)
lr_decay_iters = 100000     # one cosine per round
dataset = 'openwebtext'
# 12 sequences x 1024 tokens x 32 accumulation steps (global) = 393,216 tokens per step (paper: 394K)
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 32
learning_rate = 3e-4
min_lr = 1e-5
warmup_iters = 2000
weight_decay = 0.1
decay_embeddings = False   # Linear weights only
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
dropout = 0.0
eval_interval = 2000
eval_iters = 200
wandb_project = 'inheritune'
wandb_run_name = 'inherit-gpt2-medium'
