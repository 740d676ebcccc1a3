# Inheritune on GPT-2 large (arXiv 2404.08634): inherit 18 of 36 blocks, 100K steps per round, +2 per round.
# Paper (OpenWebText, 100K steps): reference 36 layers 2.85, Inheritune 18 layers 2.80, 18 layers from
# scratch 2.97. Compute: one 100K-step round of the 18-layer model at 128K tokens/step is ~3.7e19 FLOPs
# (~26 H100-hours at 40% MFU).
# Sources: steps, batch, schedule and AdamW settings: the paper (App. F.2); weight decay on Linear weights only:
# the authors' released code (GPT2-experiments). The shape and scale_attn_by_inverse_layer_idx come from the
# reference: False in OpenAI's weights, True in ours (config/scratch_gpt2_*.py, as the authors trained theirs).
#
#   torchrun --standalone --nproc_per_node=8 train.py config/inherit_gpt2_large.py
out_dir = 'out-inherit-gpt2-large'
init_from = 'inherit'
reference = 'gpt2-large'
n_layer = 18
grow_every = 100000
grow_by = 2
grow_mode = 'restart'
max_iters = 900000
lr_decay_iters = 100000
dataset = 'openwebtext'
# 16 sequences x 1024 tokens x 8 accumulation steps = 131,072 tokens per step (paper: 128K)
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 8
learning_rate = 2e-4
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
wandb_run_name = 'inherit-gpt2-large'
