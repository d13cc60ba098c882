"""The model layer: the Transformer and what shapes and shards it.

- ``transformer``: the Flax NNX Transformer (causal or masked LM, learned or rotary positions, KV-cache decoding,
  scanned or unrolled blocks, MemSinks gates on the MLP units); ``layers`` its parts (attention, MLP, norms).
- ``cpu_kernels``: CPU-tuned GELU, softmax, residual-gradient store and MLP matmul with custom gradients, used
  when ``config.model.cpu_kernels`` says so (on by default on the CPU); the model's math is the same without them.
- ``layout``: converting parameters and optimizer state between scanned and unrolled blocks.
- ``sizes``: the size presets (CPU-scale to the papers' OPT and Pythia shapes), parameter and FLOP counts.
- ``sharding``: the device mesh and the logical axis rules (Flax's) that turn names into shardings.
"""
