# Stacking baseline (Gong et al. 2019; arXiv 2404.08634, App. D) for config/inherit_gpt2_medium.py: 8 layers from
# scratch for T = 100K steps, then every block duplicated in order ([0..7, 0..7]) to 16 layers and 100K more steps.
# Growth on a fixed schedule: no reference and no target (target_val_loss = 0 without a reference means "grow at every
# round end"); restart mode gives the second stage its own AdamW and warmup + cosine, as the authors' two separate
# runs had. Paper (arXiv 2404.08634, Tables 2 and 5): this row's number could not be read here (no copy of the tables
# was available); the authors' released logs (github.com/sanyalsunny111/LLM-Inheritune,
# GPT2-experiments/logs/OpenWebText_logs/Baselines/medium-baselines/medium_stacking.txt, medium_stacking_2rnd.txt) end
# at val loss 3.0106 (8 layers) and 2.8441 (16 layers) at step 100K of each stage. Compute: ~1.07e20 (~75 H100-hours
# at 40% MFU) for both stages.
# Sources: shape, steps, batch, schedule and AdamW settings: the paper (App. F.2); the authors' released code
# (GPT2-experiments) adds two the paper does not state: attention logits scaled by 1/(layer + 1) and weight
# decay on Linear weights only (none on the embeddings).
#
#   torchrun --standalone --nproc_per_node=8 train.py config/stack_gpt2_medium.py
out_dir = 'out-stack-gpt2-medium'
init_from = 'scratch'
n_layer = 8
n_head = 16
n_embd = 1024
vocab_size = 50304
bias = False
scale_attn_by_inverse_layer_idx = True
grow_every = 100000
grow_mode = 'restart'
grow_init = 'stack'
max_layers = 16
max_iters = 200000
lr_decay_iters = 100000     # one cosine per stage
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
wandb_run_name = 'stack-gpt2-medium'
