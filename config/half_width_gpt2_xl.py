# Half-width baseline (arXiv 2404.08634, App. D) for config/inherit_gpt2_xl.py: all 48 blocks of the reference, each
# narrowed to its first 12 heads (head size 64 kept), first half of its MLP units and the first 768 dimensions of the
# embeddings and norms (inherit.shrink_width), trained for 100K steps (Inheritune's T). GPT-2 xl's 25 heads do not
# halve: this keeps 12 heads of 64 dimensions (768 = 0.48 of its 1600); how the authors halved it is not known here.
# Paper (arXiv 2404.08634, Tables 2 and 5): this row's number could not be read here (no copy of the tables was
# available); the authors' released logs (github.com/sanyalsunny111/LLM-Inheritune,
# GPT2-experiments/logs/OpenWebText_logs/Baselines/xlarge-baselines/xlarge_halfwdth.txt) ends at val loss 2.7778 at
# step 100K. Compute: ~3.6e19 (~25 H100-hours at 40% MFU), not counting the reference's training.
# Sources: steps, batch, schedule and AdamW settings: the paper (App. F.2); weight decay on Linear weights only:
# the authors' released code (GPT2-experiments). The shape and scale_attn_by_inverse_layer_idx come from the
# reference: False in OpenAI's weights, True in ours (config/scratch_gpt2_*.py, as the authors trained theirs).
#
#   torchrun --standalone --nproc_per_node=8 train.py config/half_width_gpt2_xl.py
out_dir = 'out-half-width-gpt2-xl'
init_from = 'inherit'
reference = 'gpt2-xl'
n_layer = 48                 # every block
n_embd = 768
n_head = 12
max_iters = 100000
lr_decay_iters = 100000
dataset = 'openwebtext'
# 8 x 1024 x 16 = 131,072 tokens per step (paper: 128K)
batch_size = 8
block_size = 1024
gradient_accumulation_steps = 16
learning_rate = 0.00015
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
wandb_run_name = 'half-width-gpt2-xl'
