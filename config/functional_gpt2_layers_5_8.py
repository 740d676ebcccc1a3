# The functional test of GPT-2 small's blocks (arXiv 2404.08634, Sec. 2.1, Table 4): a 4-layer student made of the
# reference's layers 5-8 (0-based blocks 4,5,6,7), trained 100K steps on OpenWebText like the other 4-layer students.
# Paper, val loss after 100K steps: random init 3.25, layers 1-4 3.22, layers 5-8 3.19, lazy layers 9-12 3.23;
# mean attention rank (AvgRank) of the groups 8.40 / 9.48 / 1.22. This group: 3.19 (AvgRank 9.48).
# Sources: steps, batch, schedule and AdamW settings: the paper (App. F.2); weight decay on Linear weights only:
# the authors' released code (GPT2-experiments). The shape and scale_attn_by_inverse_layer_idx come from the
# reference: False in OpenAI's weights, True in ours (config/scratch_gpt2_*.py, as the authors trained theirs).
#
#   python prepare_owt.py                      # -> data/openwebtext
#   torchrun --standalone --nproc_per_node=8 train.py config/functional_gpt2_layers_5_8.py
#
# the other groups: config/functional_gpt2_layers_{1_4,5_8,9_12}.py, config/functional_gpt2_random.py; on any
# model in miniature: python layer_test.py (docs/functional_test.md).
out_dir = 'out-functional-gpt2-layers-5_8'
init_from = 'inherit'
reference = 'gpt2'
inherit_layers = '4,5,6,7'
n_layer = 4
max_iters = 100000
lr_decay_iters = 100000
dataset = 'openwebtext'
# 12 sequences x 1024 tokens x 32 accumulation steps (global) = 393,216 tokens per step, as the Inheritune configs
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
wandb_run_name = 'functional-gpt2-layers-5_8'
