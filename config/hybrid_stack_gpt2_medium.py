# Hybrid stacking baseline (arXiv 2404.08634, App. D) for config/inherit_gpt2_medium.py: the reference's first 8
# blocks, duplicated in order ([0..7, 0..7], 16 layers), trained for 100K steps (Inheritune's T). Paper (arXiv
# 2404.08634, Tables 2 and 5): this row's number could not be read here (no copy of the tables was available); the
# authors' released logs (github.com/sanyalsunny111/LLM-Inheritune,
# GPT2-experiments/logs/OpenWebText_logs/Baselines/medium-baselines/medium_hybridstacking.txt) ends at val loss 2.8393
# at step 100K. Compute: ~6.8e19 (~47 H100-hours at 40% MFU), not counting the reference's training.
# Sources: steps, batch, schedule and AdamW settings: the paper (App. F.2); weight decay on Linear weights only:
# the authors' released code (GPT2-experiments). The shape and scale_attn_by_inverse_layer_idx come from the
# reference: False in OpenAI's weights, True in ours (config/scratch_gpt2_*.py, as the authors trained theirs).
#
#   torchrun --standalone --nproc_per_node=8 train.py config/hybrid_stack_gpt2_medium.py
out_dir = 'out-hybrid-stack-gpt2-medium'
init_from = 'inherit'
reference = 'gpt2-medium'
inherit_layers = '0,1,2,3,4,5,6,7,0,1,2,3,4,5,6,7'
max_iters = 100000
lr_decay_iters = 100000
dataset = 'openwebtext'
# 12 x 1024 x 32 = 393,216 tokens per step (paper: 394K)
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 32
learning_rate = 0.0003
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
wandb_run_name = 'hybrid-stack-gpt2-medium'
