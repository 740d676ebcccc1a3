# Baseline for config/inherit_gpt2_xl.py: a 24-layer GPT-2 xl shape trained from scratch on
# OpenWebText for 100K steps with the paper's hyperparameters (arXiv 2404.08634, App. F).
# Paper: 24 layers from scratch 2.69. Compute: ~7.1e19 FLOPs (~50 H100-hours at 40% MFU).
# Sources: shape, steps, batch, schedule and AdamW settings: the paper (App. F.2); the authors' released code
# (GPT2-experiments) adds two the paper does not state: attention logits scaled by 1/(layer + 1) and weight
# decay on Linear weights only (none on the embeddings).
#
#   torchrun --standalone --nproc_per_node=8 train.py config/scratch_gpt2_xl_24l.py
out_dir = 'out-scratch-gpt2-xl-24l'
init_from = 'scratch'
n_layer = 24
n_head = 25
n_embd = 1600
vocab_size = 50304
bias = False
scale_attn_by_inverse_layer_idx = True
dropout = 0.0
dataset = 'openwebtext'
batch_size = 8
block_size = 1024
gradient_accumulation_steps = 16
max_iters = 100000
lr_decay_iters = 100000
learning_rate = 0.00015
min_lr = 1e-5
warmup_iters = 2000
weight_decay = 0.1
decay_embeddings = False   # Linear weights only
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_interval = 2000
eval_iters = 200
wandb_project = 'inheritune'
wandb_run_name = 'scratch-gpt2-xl-24l'
