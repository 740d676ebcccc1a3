"""The modules the scripts at the repository's top share: one home for each piece.

checkpoint    the checkpoint format (its docstring), atomic save and load, sharded (FSDP) checkpoints
source        what a model name means, decided once (our checkpoint, a sharded one, a Hugging Face folder or Hub
              id), and loading a model by its name
hf            Hugging Face models in and out (GPT-2, Llama, Qwen2, Mistral), safetensors, the Hub
data          token files, meta.json, training batches and the fixed evaluation windows
tokenizer     GPT-2 BPE (bundled), characters, Hugging Face tokenizers
distributed   one process, DDP or FSDP2: process groups, wrapping and sharding models, rank-0 loading
run           a training run in its out_dir: its identity, log.jsonl, checkpoint save, exact resume
configurator  config files and --key=value flags, checked against a script's defaults
atomic        writes that leave the old file whole until the new one is complete
perf          GPU peak FLOP/s and MFU
hub           whether the Hugging Face Hub can be reached (asked once; offline, commands fail at once)
Imports go one way (no circle): model.py, atomic, hub, configurator and perf import nothing of ours, tokenizer only
hub; data, checkpoint and hf import only those; source and distributed build on these three; run on distributed.
"""
