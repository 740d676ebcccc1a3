# The functional test's control (arXiv 2404.08634, Sec. 2.1, Table 4): a 4-layer model of GPT-2 small's shape from
# random init, trained 100K steps on OpenWebText like the 4-layer students of GPT-2's layers 1-4, 5-8 and 9-12.
# Paper, val loss after 100K steps: random init 3.25, layers 1-4 3.22, layers 5-8 3.19, lazy layers 9-12 3.23;
# mean attention rank (AvgRank) of the groups 8.40 / 9.48 / 1.22.
# Sources: steps, batch, schedule and AdamW settings: the paper (App. F.2); weight decay on Linear weights only:
# the authors' released code. scale_attn_by_inverse_layer_idx stays False, as in the students inherited from
# OpenAI's GPT-2, so that only the initialization differs.
#
#   python prepare_owt.py                      # -> data/openwebtext
#   torchrun --standalone --nproc_per_node=8 train.py config/functional_gpt2_random.py
#
# the students: config/functional_gpt2_layers_{1_4,5_8,9_12}.py; on any model in miniature: python layer_test.py
# (docs/functional_test.md).
out_dir = 'out-functional-gpt2-random'
init_from = 'scratch'
n_layer = 4
# GPT-2 small's width and exactly the inherited students' shape (OpenAI's GPT-2 has biases and 50257 tokens), so
# that only the initialization differs
n_head = 12
n_embd = 768
vocab_size = 50257
bias = True
max_iters = 100000
lr_decay_iters = 100000
dataset = 'openwebtext'
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
wandb_run_name = 'functional-gpt2-random'
