"""Prompt IO: .npy round trips and Hugging Face PEFT's MPT adapter, against real PEFT."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mpt_jax.prompts import ComposedPrompt, MultitaskPrompt, compositions
from mpt_jax.prompts import io as prompt_io

T, L, D, R = 3, 4, 8, 2


def _mpt_params(seed=0, tasks=T):
    module = MultitaskPrompt(num_tasks=tasks, length=L, embed_dim=D, num_ranks=R)
    variables = module.init(jax.random.key(seed), np.arange(tasks), None)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda x: rng.normal(size=x.shape).astype(np.float32), nn.unbox(variables)["params"]
    )
    return module, variables, params


def test_npy_round_trip_is_identical_and_file_names_use_the_separator(tmp_path):
    module = ComposedPrompt(
        num_tasks=2, length=L, embed_dim=D,
        composition=compositions.Attention(pool_size=2, hidden=3),
    )  # fmt: skip
    variables = module.init(jax.random.key(0), np.array([0, 1]), jnp.ones((2, 3, D)))
    paths = prompt_io.save_npy(variables["params"], str(tmp_path))
    names = sorted(os.path.basename(p) for p in paths)
    assert "attn_down.kernel.npy" in names and "source_prompts.npy" in names
    loaded = prompt_io.load_npy(str(tmp_path), template=variables["params"])
    expected = nn.unbox(variables["params"])
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, expected))
    assert jax.tree.structure(loaded) == jax.tree.structure(expected)


def test_npy_load_errors_name_the_parameter_and_shapes(tmp_path):
    _, variables, params = _mpt_params()
    prompt_io.save_npy(params, str(tmp_path))
    template = variables["params"]
    with pytest.raises(FileExistsError, match="already holds 3 .npy files"):
        prompt_io.save_npy(params, str(tmp_path))
    _, other, _ = _mpt_params(tasks=5)
    with pytest.raises(ValueError, match=r"'task_cols' has shape \(3, 4, 2\) but \(5, 4, 2\)"):
        prompt_io.load_npy(str(tmp_path), template=other["params"])
    np.save(tmp_path / "stray.npy", np.zeros(2))
    with pytest.raises(ValueError, match=r"parameters \['stray'\] that the template lacks"):
        prompt_io.load_npy(str(tmp_path), template=template)
    os.remove(tmp_path / "stray.npy")
    os.remove(tmp_path / "shared.npy")
    with pytest.raises(ValueError, match=r"lacks parameters \['shared'\]"):
        prompt_io.load_npy(str(tmp_path), template=template)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prompt_io.load_npy(str(tmp_path / "missing"))
    prompt_io.save_npy(params, str(tmp_path), overwrite=True)
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    with pytest.raises(ValueError, match="dtype float32 but bfloat16 is expected"):
        prompt_io.load_npy(str(tmp_path), template=bf16)


# --- PEFT ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peft_setup(tmp_path_factory):
    """A tiny T5 (offline) with a PEFT MPT adapter, saved by PEFT itself."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(
        vocab_size=32, d_model=D, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1,
        num_heads=2, decoder_start_token_id=0,
    )  # fmt: skip

    def base_model():
        torch.manual_seed(0)
        return transformers.T5ForConditionalGeneration(config)

    peft_config = peft.MultitaskPromptTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=L, num_tasks=T, num_ranks=R,
        num_transformer_submodules=1,
    )  # fmt: skip
    model = peft.get_peft_model(base_model(), peft_config)
    directory = str(tmp_path_factory.mktemp("peft_saved"))
    model.save_pretrained(directory)
    return torch, peft, base_model, model, directory


def test_peft_saved_adapter_imports_to_identical_tensors(peft_setup):
    torch, _, _, model, directory = peft_setup
    assert set(load_file(os.path.join(directory, "adapter_model.safetensors"))) == {
        "prompt_embeddings", "prefix_task_cols", "prefix_task_rows",
    }  # fmt: skip
    params, config = prompt_io.import_peft(directory)
    encoder = model.prompt_encoder["default"]
    np.testing.assert_array_equal(params["shared"], encoder.embedding.weight.detach().numpy())
    np.testing.assert_array_equal(params["task_cols"], encoder.prefix_task_cols.detach().numpy())
    np.testing.assert_array_equal(params["task_rows"], encoder.prefix_task_rows.detach().numpy())
    assert (config["num_tasks"], config["num_virtual_tokens"], config["num_ranks"]) == (T, L, R)
    # The imported prompt through our generator equals PEFT's prompt for the same ids.
    module = prompt_io.generator_from_peft_config(config)
    assert (module.num_tasks, module.length, module.embed_dim, module.num_ranks) == (T, L, D, R)
    ids = np.array([2, 0, 1, 2], np.int32)
    ours = module.apply({"params": params}, ids, None)
    with torch.no_grad():
        theirs = model.get_prompt(len(ids), task_ids=torch.tensor(ids, dtype=torch.long))
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-6, rtol=0)


def test_our_export_loads_in_peft_and_gives_our_prompt(peft_setup, tmp_path):
    torch, peft, base_model, _, _ = peft_setup
    module, _, params = _mpt_params(seed=4)
    config = prompt_io.export_peft(params, str(tmp_path))
    assert config["num_transformer_submodules"] == 1
    modes = {n: os.stat(tmp_path / n).st_mode & 0o777 for n in os.listdir(tmp_path)}
    assert len(set(modes.values())) == 1, modes  # the weights as readable as the config
    loaded = peft.PeftModel.from_pretrained(base_model(), str(tmp_path))
    encoder = loaded.prompt_encoder["default"]
    np.testing.assert_array_equal(encoder.embedding.weight.detach().numpy(), params["shared"])
    ids = np.array([1, 2, 0, 1, 1], np.int32)
    with torch.no_grad():
        indices = torch.arange(L).unsqueeze(0).expand(len(ids), -1)
        theirs = encoder(indices, torch.tensor(ids, dtype=torch.long)).numpy()
        via_model = loaded.get_prompt(len(ids), task_ids=torch.tensor(ids, dtype=torch.long))
    ours = np.asarray(module.apply({"params": params}, ids, None))
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours, via_model.numpy(), atol=1e-6, rtol=0)
    # and back: ours → PEFT layout → ours is the identity
    again, _ = prompt_io.import_peft(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_peft_two_submodule_adapter_is_refused(peft_setup, tmp_path):
    _, peft, base_model, _, _ = peft_setup
    config = peft.MultitaskPromptTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=L, num_tasks=T, num_ranks=R
    )
    model = peft.get_peft_model(base_model(), config)
    model.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert saved["prompt_embeddings"].shape == (2 * L, D)  # encoder and decoder halves
    with pytest.raises(ValueError, match="num_transformer_submodules=2"):
        prompt_io.import_peft(str(tmp_path))


def test_peft_mismatches_name_what_does_not_fit(tmp_path):
    module, variables, params = _mpt_params()
    prompt_io.export_peft(params, str(tmp_path))
    _, other, _ = _mpt_params(tasks=5)
    with pytest.raises(ValueError, match=r"'task_cols' has shape \(3, 4, 2\) but \(5, 4, 2\)"):
        prompt_io.import_peft(str(tmp_path), template=other["params"])
    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["num_tasks"] = 7
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="says num_tasks=7 but the tensors have num_tasks=3"):
        prompt_io.import_peft(str(tmp_path))
    config["num_tasks"] = 3
    config_path.write_text(json.dumps(config))
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    tensors["prefix_task_rows"] = np.zeros((3, 2, 5), np.float32)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"task_rows has shape \(3, 2, 5\).*need \(3, 2, 8\)"):
        prompt_io.import_peft(str(tmp_path))
    with pytest.raises(ValueError, match=r"exactly \['shared', 'task_cols', 'task_rows'\]"):
        prompt_io.export_peft({"shared": params["shared"]}, str(tmp_path / "x"))
    config["peft_type"] = "LORA"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="peft_type is 'LORA'"):
        prompt_io.import_peft(str(tmp_path))
