# Inheritune from Llama-3.1-8B with FSDP: inherit its first 16 of 32 blocks (a 4.5B student: 16 blocks of 218M
# parameters, 1.05B in the untied embedding and head), train, grow by 2 blocks per 100K-step round.
# DDP cannot hold it on 80 GB cards: fp32 weights, gradients and AdamW state are 16 bytes a parameter, 73 GB,
# before DDP's gradient buckets and any activation. FSDP over 8 GPUs keeps 9 GB of that state per GPU
# (docs/training.md, "FSDP: past one GPU"). One 100K-step round of the 16-block student is ~3.3e20 FLOPs
# (flops_per_token 2.5e10 x 131K tokens x 100K steps): ~29 hours on 8 H100s at an assumed 40% MFU.
#
#   hf download meta-llama/Llama-3.1-8B --local-dir /models/Llama-3.1-8B       # gated: accept its license first
#   python prepare_owt.py --tokenizer=/models/Llama-3.1-8B --dataset=HuggingFaceFW/fineweb-edu \
#       --subset=sample-10BT --out_dir=data/fineweb_edu_llama3 --num_proc=16      # 128,256 ids: uint32
#   torchrun --standalone --nproc_per_node=8 train.py config/inherit_llama3_8b_fsdp.py               # one node
#   torchrun --nnodes=4 --node_rank=$NODE_RANK --nproc_per_node=8 --master_addr=... --master_port=29500 \
#       train.py config/inherit_llama3_8b_fsdp.py --fsdp_shard_size=8      # shard in a node, replicate across 4
#
# Rank 0 alone reads the reference's chosen blocks; the student's shards reach the other ranks from it.
out_dir = 'out-inherit-llama3-8b'
init_from = 'inherit'
reference = '/models/Llama-3.1-8B'
n_layer = 16
grow_every = 100000
grow_by = 2
grow_mode = 'restart'
max_iters = 900000  # 16 -> 32 blocks: 9 rounds
lr_decay_iters = 100000
dataset = 'fineweb_edu_llama3'
# 4 sequences x 1024 tokens x 32 accumulation steps = 131,072 tokens per step (the paper's 128K); 4 micro-steps
# per GPU on 8 GPUs (between them each GPU accumulates fp32 gradients unsharded, 18 GB). The logits of 4 x 1024
# tokens over 128,256 ids and their float32 copies take over 5 GB; activation checkpointing keeps block inputs only.
batch_size = 4
block_size = 1024
gradient_accumulation_steps = 32
learning_rate = 1.5e-4
min_lr = 1e-5
warmup_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
dropout = 0.0
eval_interval = 2000
eval_iters = 100
# how it runs: bf16 compute, fp32 master weights and gradient reduction; per-block compile and recomputation
fsdp = True
activation_checkpointing = True
dtype = 'bfloat16'
compile = True
dist_timeout_s = 3600  # the other ranks wait while rank 0 reads the reference (16 GB in bf16)
wandb_project = 'inheritune'
wandb_run_name = 'inherit-llama3-8b-fsdp'
