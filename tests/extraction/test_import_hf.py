"""`memdyn import-hf`: a randomly initialised Hugging Face GPT-NeoX, built locally and saved as safetensors,
gives memdyn the same logits and greedy continuations as transformers itself (float32, CPU), through
`memdyn import-hf` and `memdyn extract`. Unsupported configs are refused with the field named."""

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")  # the test extra installs torch==2.13.0 (CPU) and transformers
transformers = pytest.importorskip("transformers")

from memdyn.data import indexed, run_data  # noqa: E402
from memdyn.extraction import eval_checkpoint, extract_job, import_hf
from memdyn.rundir import runs
from memdyn.train import steps  # noqa: E402

VOCAB, M, N = 97, 16, 16


def _save_neox(path, **overrides):
    """A random GPT-NeoX with logits spread wide enough (initializer_range 0.3) that greedy argmaxes do not tie."""
    torch.manual_seed(0)
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        rotary_pct=0.25,
        initializer_range=0.3,
        use_parallel_residual=True,
    )
    fields.update(overrides)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**fields)).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [True, False])
def test_logits_and_greedy_continuations_equal_transformers(tmp_path, parallel):
    hf = _save_neox(tmp_path / "hf", use_parallel_residual=parallel, rotary_emb_base=500.0)
    summary = import_hf.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"), step=7)
    assert summary["params"] == sum(p.numel() for p in hf.parameters())
    config = runs.load_config(str(tmp_path / "run"))
    assert config.model.parallel_residual is parallel and config.model.rotary_base == 500.0
    run = steps.build_run(config, run_data.open_run_data(str(tmp_path / "run"), config))
    restored = eval_checkpoint.restore(run, str(tmp_path / "run"), None)
    assert restored.step == 7
    from memdyn.extraction.extractability import _merge

    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(6, M + N)).astype(np.int32)
    ours = np.asarray(_merge(run.graphdef, restored.params)(tokens))
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)  # float32, different op orders
    # greedy continuations of the first M tokens: memdyn's KV-cache decoding vs transformers' generate
    # (no end-of-text stop, and an explicit attention mask: generate would take prompt tokens equal to the pad id
    # for padding)
    hf.generation_config.eos_token_id = None
    prompts = torch.tensor(tokens[:, :M], dtype=torch.long)
    with torch.no_grad():
        generated = hf.generate(
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=N, do_sample=False, pad_token_id=0
        ).numpy()[:, M:]
    assert generated.shape == (6, N)
    # the truth to score against: transformers' own continuation for rows 0-2, random tokens for rows 3-5
    scored = tokens.copy()
    scored[:3, M:] = generated[:3]
    np.save(tmp_path / "tokens.npy", scored)
    extract_job.run_extract(
        str(tmp_path / "run"),
        out=str(tmp_path / "x.csv"),
        tokens=str(tmp_path / "tokens.npy"),
        prompt_len=M,
        num_new=N,
        score=True,
    )
    frame = pd.read_csv(tmp_path / "x.csv")
    expected = (generated == scored[:, M:]).mean(axis=1)
    np.testing.assert_allclose(frame["score"], expected, atol=1e-6)
    assert frame["memorized"].tolist() == [True] * 3 + [False] * 3
    # and the same rows read from GPT-NeoX indexed data (Pythia's format, uint16 tokens)
    indexed.write_indexed(str(tmp_path / "d"), list(scored))
    extract_job.run_extract(
        str(tmp_path / "run"),
        out=str(tmp_path / "i.csv"),
        indexed=str(tmp_path / "d"),
        rows="0:6",
        prompt_len=M,
        num_new=N,
        score=True,
    )
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "i.csv"), frame)


def test_unsupported_configs_are_refused_by_field(tmp_path):
    _save_neox(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    original = json.loads(config_path.read_text())
    for change, message in (
        ({"model_type": "gpt2"}, "model_type='gpt2'"),
        ({"hidden_act": "relu"}, "hidden_act='relu'"),
        ({"attention_bias": False}, "attention_bias=False"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"hidden_size": 48}, "query_key_value"),
    ):
        config_path.write_text(json.dumps({**original, **change}))
        with pytest.raises(ValueError, match=message):
            import_hf.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
        assert not (tmp_path / "run").exists()
    config_path.write_text(json.dumps(original))
    import_hf.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
    with pytest.raises(FileExistsError, match="already holds a run"):
        import_hf.import_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        import_hf.import_hf(str(tmp_path), str(tmp_path / "other"))
    # an imported model has no training data: it scores sources, it does not train
    from memdyn.train import job

    with pytest.raises(ValueError, match="does not train"):
        job.train(runs.load_config(str(tmp_path / "run")), str(tmp_path / "run2"))


def test_bfloat16_and_float16_weights_read_as_float32(tmp_path):
    for dtype in (torch.bfloat16, torch.float16):
        hf = _save_neox(tmp_path / "f32")  # a fresh float32 model each time (.to() converts in place)
        reference = {k: v.float().numpy().copy() for k, v in hf.state_dict().items()}
        hf.to(dtype).save_pretrained(str(tmp_path / str(dtype)), safe_serialization=True)
        weights = import_hf.read_weights(str(tmp_path / str(dtype)))
        assert len(weights) == len(reference)
        for name, array in weights.items():
            key = {"embed_out.weight": "lm_head.weight"}.get(name, name)  # the file keeps GPT-NeoX's old name
            expected = torch.from_numpy(reference[key]).to(dtype).float().numpy()
            np.testing.assert_array_equal(array, expected, err_msg=name)
