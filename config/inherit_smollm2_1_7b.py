# Inheritune on a current open model: SmolLM2-1.7B (24 Llama blocks, 2048 wide, 32 heads, tied embeddings, a
# 49,152-token vocabulary) -> its first 12 blocks, grown by 2 per round until the val loss reaches the whole
# model's, on FineWeb-Edu (part of SmolLM2's own pre-training mix), tokenized with SmolLM2's tokenizer.
# The paper has no SmolLM2 experiment: the schedule below is ours (the paper's recipe, Algorithm 1, in restart
# mode, with GPT-2-style settings scaled to ~0.5M tokens per step); no result is claimed for it yet.
# Size: 12 blocks of 67.1M parameters + the tied 100.7M embedding = 0.91B parameters at the start, 1.71B at 24.
# A round is 5,000 steps x 524,288 tokens = 2.6B tokens, ~1.6e19 FLOPs at 12 blocks (6N + attention, as train.py
# counts them).
#
#   hf download HuggingFaceTB/SmolLM2-1.7B --local-dir /models/SmolLM2-1.7B        # on a machine with network
#   python prepare_owt.py --tokenizer=/models/SmolLM2-1.7B --dataset=HuggingFaceFW/fineweb-edu \
#       --subset=sample-10BT --out_dir=data/fineweb_edu_smollm2 --num_proc=16
#   torchrun --standalone --nproc_per_node=8 train.py config/inherit_smollm2_1_7b.py
out_dir = 'out-inherit-smollm2-1.7b'
init_from = 'inherit'
reference = '/models/SmolLM2-1.7B'
n_layer = 12                # l = L/2 of 24
grow_every = 5000           # steps per round
grow_by = 2
grow_mode = 'restart'       # Algorithm 1: re-inherit l + 2 blocks, fresh optimizer and schedule
max_iters = 35000           # upper bound: at most 7 rounds (12, 14, ..., 24 blocks)
lr_decay_iters = 5000       # one cosine per round
dataset = 'fineweb_edu_smollm2'
# 8 sequences x 2048 tokens x 32 accumulation steps (global) = 524,288 tokens per step
batch_size = 8
block_size = 2048
gradient_accumulation_steps = 32
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 500
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
dropout = 0.0
eval_interval = 1000
eval_iters = 100
wandb_project = 'inheritune'
wandb_run_name = 'inherit-smollm2-1.7b'
