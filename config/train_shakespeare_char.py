# A small character-level GPT on the bundled Shakespeare corpus; runs on a laptop CPU in minutes:
#   python train.py config/train_shakespeare_char.py
# On a GPU, make it nanoGPT's baby GPT: --device=cuda --compile=True --n_layer=6 --n_head=6 --n_embd=384
#   --block_size=256 --batch_size=64 --dropout=0.2 --max_iters=5000 --lr_decay_iters=5000 --learning_rate=1e-3
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 20
log_interval = 10
always_save_checkpoint = False  # the training set is small: keep the best val loss

gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 6  # deep enough that the student, grown from its first 3 blocks, stays smaller
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3  # a small model can take a higher learning rate
max_iters = 1600
lr_decay_iters = 1600  # = max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a little higher than GPT-2's 0.95: few tokens per iteration
warmup_iters = 100

device = "cpu"
compile = False
