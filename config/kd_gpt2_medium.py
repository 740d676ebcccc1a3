# Knowledge distillation baseline (arXiv 2404.08634, App. D): a 16-layer student trained for 50K steps on 0.6 * CE +
# 0.4 * KL(teacher || student) with the 24-layer GPT-2 medium as its frozen teacher (temperature 1). The student
# starts from scratch here; a DistilBERT-style start from the teacher's blocks (two of every three) is a flag away:
#   --init_from=inherit --reference=gpt2-medium --inherit_layers=0,1,3,4,6,7,9,10,12,13,15,16,18,19,21,22
# Paper (arXiv 2404.08634, Tables 2 and 5): this row's number could not be read here (no copy of the tables was
# available); the authors' released logs (github.com/sanyalsunny111/LLM-Inheritune,
# GPT2-experiments/logs/OpenWebText_logs/Baselines/KD/distill_medium.txt) ends at val loss 3.0190 at step 50K
# (distill_medium_init.txt: 3.0276; distill_medium_init_ly12.txt: 3.0597; which initializations those are is not
# documented there). The KL is over the data's 50257 GPT-2 ids, the student's 50304 padded logits cut to them.
# Compute: ~5.0e19 FLOPs (~35 H100-hours at 40% MFU), the teacher's forward passes included.
#
#   torchrun --standalone --nproc_per_node=8 train.py config/kd_gpt2_medium.py
out_dir = 'out-kd-gpt2-medium'
init_from = 'scratch'
n_layer = 16
n_head = 16
n_embd = 1024
vocab_size = 50304
bias = False
teacher = 'gpt2-medium'     # or our 24-layer out_dir (config/scratch_gpt2_medium.py), or a local HF folder
kd_alpha = 0.6
kd_temperature = 1.0
max_iters = 50000
lr_decay_iters = 50000
dataset = 'openwebtext'
# 12 x 1024 x 32 = 393,216 tokens per step (paper: 394K)
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 32
learning_rate = 0.0003
min_lr = 1e-5
warmup_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
dropout = 0.0
eval_interval = 2000
eval_iters = 200
wandb_project = 'inheritune'
wandb_run_name = 'kd-gpt2-medium'
