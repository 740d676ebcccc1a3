# Baseline for config/inherit_gpt2_large.py at 2T: the 18-layer model (Inheritune's final depth) from scratch for 200K
# steps, twice Inheritune's 100K-step round, so that it is compared at equal steps of its final round AND beyond
# Inheritune's total (arXiv 2404.08634, Table 2's "2x steps" rows). T = 100K: config/scratch_gpt2_large_18l.py. Paper
# (arXiv 2404.08634, Tables 2 and 5): this row's number could not be read here (no copy of the tables was available);
# the authors' released logs (github.com/sanyalsunny111/LLM-Inheritune,
# GPT2-experiments/logs/OpenWebText_logs/large-scratch/large-200k_log.txt) ends at val loss 2.8470 at step 200K (same
# initialization as large-half_log.txt, the 18-layer run at 100K: 2.9737). Compute: ~7.3e19 (~51 H100-hours at 40%
# MFU).
# Sources: shape, steps, batch, schedule and AdamW settings: the paper (App. F.2); the authors' released code
# (GPT2-experiments) adds two the paper does not state: attention logits scaled by 1/(layer + 1) and weight
# decay on Linear weights only (none on the embeddings).
#
#   torchrun --standalone --nproc_per_node=8 train.py config/scratch_gpt2_large_18l_2x.py
out_dir = 'out-scratch-gpt2-large-18l-2x'
init_from = 'scratch'
n_layer = 18
n_head = 20
n_embd = 1280
vocab_size = 50304
bias = False
scale_attn_by_inverse_layer_idx = True
max_iters = 200000
lr_decay_iters = 200000
dataset = 'openwebtext'
# 16 x 1024 x 8 = 131,072 tokens per step (paper: 128K)
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 8
learning_rate = 0.0002
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
wandb_run_name = 'scratch-gpt2-large-18l-2x'
