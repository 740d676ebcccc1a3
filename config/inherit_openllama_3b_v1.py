# Inheritune's first experiment (arXiv 2404.08634v1, "Pre-training Small Base LMs with Fewer Tokens"): a 1.5B
# model from the first 13 of OpenLLaMA-3B's 26 blocks, trained on a 1B-token sample of RedPajama, without growth
# (v1's recipe: inherit, then train). The abstract: "a small base LM with 1.5B parameters using 1B tokens (and a
# starting few layers of larger LM of 3B parameters) ... a single A6000 GPU for less than half a day".
#
# The paper's own hyperparameter text could not be retrieved here (no copy of v1's PDF was reachable with our
# search tools), so the settings below are those of the authors' released training script,
# github.com/sanyalsunny111/LLM-Inheritune lit-gpt/Training/train.py: layer = 13, learning_rate = 3e-4,
# batch_size = 8 sequences of OpenLLaMA's 2048 tokens (micro-batch 1, 8 accumulation steps), max_iters = 191000
# micro-batches (= 23,875 optimizer steps, 391M tokens), warmup_steps = 1000 then a constant learning rate,
# weight_decay = 0.01, torch's AdamW betas (0.9, 0.999), no gradient clipping, bf16 weights (here: bf16 autocast
# over float32 weights, train.py's dtype=auto on GPUs that have bf16). It copies the blocks and the
# LM head; the token embedding and final norm of the student stay at their initialization there (here they are
# inherited, as in v2's Algorithm 1: --inherit_fresh=ln_f leaves the norm fresh).
# The repository's README reports for this model (zero-shot, MMLU 5-shot), ours-1.5B vs OpenLLaMA-3B:
# Winograd 50.96 / 63.46, PIQA 56.47 / 74.97, BoolQ 61.68 / 67.18, WinoGrande 51.69 / 62.27, LogiQA 25.19 / 28.4,
# MMLU 25.67 / 27.21, WNLI 43.66 / 50.7, QNLI 49.41 / 51.3, MNLI 34.42 / 37.3, TruthfulQA 48.61 / 35.
# Size here: 13 blocks of 123.9M parameters + 102.4M LM head + 102.4M token embedding = 1.82B parameters.
#
#   hf download openlm-research/open_llama_3b --local-dir /models/open_llama_3b      # on a machine with network
#   python prepare_owt.py --tokenizer=/models/open_llama_3b --dataset=togethercomputer/RedPajama-Data-1T-Sample \
#       --out_dir=data/redpajama_1b_openllama --num_proc=16
#   python train.py config/inherit_openllama_3b_v1.py                 # one GPU, as the paper
#
# OpenLLaMA's model card advises against its auto-converted fast tokenizer (it sometimes tokenizes wrongly);
# prepare_owt.py uses AutoTokenizer's default, the fast one.
out_dir = 'out-openllama-3b-13l'
init_from = 'inherit'
reference = '/models/open_llama_3b'
n_layer = 13                # of 26
dataset = 'redpajama_1b_openllama'
block_size = 2048
batch_size = 1
gradient_accumulation_steps = 8  # 8 x 2048 = 16,384 tokens per step
max_iters = 23875
learning_rate = 3e-4
warmup_iters = 1000
lr_decay_iters = 23875
min_lr = 3e-4               # = learning_rate: constant after the warm-up, as the released script
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 0.0
dropout = 0.0
eval_interval = 1000
eval_iters = 100
wandb_project = 'inheritune'
wandb_run_name = 'inherit-openllama-3b-13l'
