"""finetune_method "lora" and "qlora": adapters train on a frozen (4-bit) base, checkpoints hold the adapters only,
a stopped run resumes exactly, and the export loads in peft and, merged, in transformers alone.

Nothing is downloaded: the "pretrained" models are a tiny LlamaForCausalLM and GPT-2 built from configs, with a
byte-level BPE tokenizer trained here that carries a chat template, saved with save_pretrained into tmp folders.
bitsandbytes >= 0.47 runs 4-bit (nf4) layers on the CPU, so QLoRA trains here for real.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from tests.conftest import REPO_ROOT, corpus_start
from tests.test_pretrained import StopDuringStep
from utils.config import ConfigError, WizardConfig
from utils.env import DeviceInfo
from utils.export import export_result
from utils.training.callbacks.last_checkpoint import TrainingStopped

pytestmark = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed "
                                "(requirements-test.txt): LoRA is built with it")
requires_bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                           reason="bitsandbytes is not installed: QLoRA's 4-bit base needs it")

CPU = DeviceInfo("cpu", "CPU")
EOS = "<|endoftext|>"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}" + EOS + "{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TINY_RUN = dict(max_seq_len=32, batch_size=4, max_epochs=1, learning_rate=2e-2, warmup_ratio=0.0,
                log_every_n_steps=1, val_split=0.05, checkpoint_every_minutes=0, weight_decay=0.0)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = (REPO_ROOT / "utils/data/embedded/python_reference.txt").read_text(encoding="utf-8")[:20_000]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([text], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                        pad_token=EOS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_causal_lm_folder(folder, architecture: str, tokenizer, prepare=None, **config):
    """A tiny transformers causal LM of architecture ("Llama", "Qwen2", ...: its Config and ForCausalLM classes),
    seeded, saved with tokenizer into folder: 2 layers of width 32, 4 heads sharing 2 key/value heads; config
    overrides or adds fields; prepare(model) may change the weights before saving."""
    import transformers

    torch.manual_seed(0)
    fields = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64) | config
    config_class = getattr(transformers, f"{architecture}Config")
    model = getattr(transformers, f"{architecture}ForCausalLM")(config_class(**fields))
    if prepare is not None:
        prepare(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny Llama (grouped-query attention, SwiGLU: q/k/v/o/gate/up/down projections) with a chat tokenizer."""
    return tiny_causal_lm_folder(tmp_path_factory.mktemp("llama"), "Llama", _tokenizer(), eos_token_id=0,
                                 bos_token_id=0, pad_token_id=0)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=len(tokenizer),
                               bos_token_id=0, eos_token_id=0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _config(tmp_path, folder, method="lora", **changes) -> WizardConfig:
    return WizardConfig(model_source="pretrained", pretrained_model=str(folder), finetune_method=method, lora_rank=4,
                        dataset_source="file", dataset_path=str(corpus_start(tmp_path / "data", 8_000)),
                        output_dir=str(tmp_path / "run"), **{**TINY_RUN, **changes})


def _falls(history, vocab_size: int = 320) -> bool:
    """The last steps' loss is below the first steps' and below chance (ln of the vocabulary)."""
    losses = [loss for _, loss in history]
    last = sum(losses[-3:]) / 3
    return all(map(math.isfinite, losses)) and last < sum(losses[:3]) / 3 - 0.03 and last < math.log(vocab_size)


def test_lora_trains_only_the_adapters_and_the_checkpoint_holds_only_them(tmp_path, llama_folder, capsys):
    from transformers import AutoModelForCausalLM

    from utils.training import train

    result = train(_config(tmp_path, llama_folder, max_steps=16), device=CPU)
    out = capsys.readouterr().out
    assert _falls(result.train_history), result.train_history
    model = result.model
    trainable, total = model.get_nb_trainable_parameters()  # peft's own count
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in named.values()) == trainable
    assert named and all(".lora_A." in n or ".lora_B." in n for n in named)
    # all-linear: the 7 projections of each of the 2 blocks, A and B each; never the output head
    assert len(named) == 2 * 7 * 2 and not any("lm_head" in n for n in named)
    assert f"Trainable: {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%); lora, rank 4" in out
    assert "Weights: frozen base in fp32" in out and "adapters and their optimizer state in fp32" in out

    base = AutoModelForCausalLM.from_pretrained(llama_folder).state_dict()
    merged_names = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                    for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], v) for k, v in merged_names.items())  # the base did not move
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in named.items() if "lora_B" in n)  # B left zero

    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert set(state["state_dict"]) == {f"model.{n}" for n in named}  # adapters only, not the frozen base
    assert state["optimizer_states"] and state["lr_schedulers"] and state["loops"]


@requires_bitsandbytes
def test_qlora_trains_adapters_on_a_4bit_nf4_base(tmp_path, llama_folder, capsys):
    import bitsandbytes as bnb

    from utils.training import train

    result = train(_config(tmp_path, llama_folder, method="qlora", max_steps=16), device=CPU)
    out = capsys.readouterr().out
    assert _falls(result.train_history), result.train_history
    layers = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7 and all(m.weight.quant_type == "nf4" for m in layers)
    assert all(m.weight.quant_state.nested for m in layers)  # double quantisation
    assert "Weights: frozen base in 4-bit nf4 (double quantised)" in out
    trainable, _ = result.model.get_nb_trainable_parameters()
    assert sum(p.numel() for p in result.model.parameters() if p.requires_grad) == trainable
    assert all(p.dtype == torch.float32 for p in result.model.parameters() if p.requires_grad)


def test_gpt2_lora_targets_its_conv1d_layers_and_gradient_checkpointing_trains_too(tmp_path, gpt2_folder):
    from utils.training import train

    result = train(_config(tmp_path, gpt2_folder, max_steps=16, gradient_checkpointing="true"), device=CPU)
    assert _falls(result.train_history), result.train_history
    named = [n for n, p in result.model.named_parameters() if p.requires_grad]
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in named}
    assert targets == {"c_attn", "c_proj", "c_fc"}  # attention and MLP Conv1D layers, not lm_head
    base = result.model.get_base_model()
    assert base.is_gradient_checkpointing and base.config.use_cache is False
    assert result.model.peft_config["default"].fan_in_fan_out


def test_a_stopped_lora_run_resumes_with_the_same_losses_as_an_uninterrupted_one(tmp_path, llama_folder, capsys):
    from utils.training import train

    config = _config(tmp_path, llama_folder, max_steps=6, lora_dropout=0.1)  # dropout: the RNG must resume too
    with pytest.raises(TrainingStopped, match=r"at step 3"):
        train(config, device=CPU, extra_callbacks=[StopDuringStep(3)])
    resumed = train(config, device=CPU)
    assert resumed.resumed_from is not None and (resumed.global_step, resumed.steps_run) == (6, 3)
    straight = train(config.replace(output_dir=str(tmp_path / "straight")), device=CPU)
    assert resumed.train_history == straight.train_history
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_lora_target_that_matches_no_module_names_the_ones_there(tmp_path, llama_folder):
    from utils.models.adapters import AdapterError
    from utils.training import train

    with pytest.raises(AdapterError, match=r"lora_target.*'qkv' match no module of LlamaForCausalLM; use "
                                           r"'all-linear' or names among .*q_proj"):
        train(_config(tmp_path, llama_folder, lora_target="q_proj,qkv"), device=CPU)
    assert not (tmp_path / "run").exists()  # read from config.json alone, before anything was written


def test_qlora_without_bitsandbytes_says_what_to_install(tmp_path, llama_folder, monkeypatch):
    import sys

    from utils.models.adapters import AdapterError
    from utils.training import train

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # stands for a machine without it (Colab's default)
    with pytest.raises(AdapterError, match=r"'qlora' stores the model in 4 bits with the "
                                           r"bitsandbytes library, which is not installed here: pip install"):
        train(_config(tmp_path, llama_folder, method="qlora"), device=CPU)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_lora_needs_a_pretrained_model():
    with pytest.raises(ConfigError, match=r"Fine-tuning method \(finetune_method\) 'lora' fine-tunes a pretrained "
                                          r"model, but Model from is 'template'"):
        WizardConfig(finetune_method="lora").validate()
    config = WizardConfig(model_source="pretrained", pretrained_model="gpt2", finetune_method="qlora")
    assert {"lora_rank", "lora_alpha", "lora_dropout", "lora_target"} <= set(config.relevant_names())
    assert "lora_rank" not in WizardConfig(model_source="pretrained", pretrained_model="gpt2").relevant_names()


def test_the_adapter_export_loads_in_peft_and_the_merged_one_in_transformers_alone(tmp_path, llama_folder, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.export import load_exported
    from utils.training import train

    result = train(_config(tmp_path, llama_folder, max_steps=6), device=CPU)
    ids = torch.tensor([AutoTokenizer.from_pretrained(llama_folder)("The import statement").input_ids])
    with torch.no_grad():
        trained = result.model.eval()(input_ids=ids).logits

    adapter = export_result(result, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "kit_config.json"} <= {p.name for p in adapter.iterdir()}
    assert not (adapter / "model.safetensors").exists()  # megabytes: the base is not copied
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_folder), adapter).eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, trained, atol=1e-6)
    kit = load_exported(adapter)
    assert kit.chat("What is a list?", max_new_tokens=6, seed=0) == result.chat("What is a list?", max_new_tokens=6,
                                                                                seed=0)

    merged = export_result(result, tmp_path / "merged", merged=True)
    assert not (merged / "adapter_config.json").exists()  # else transformers would load base + adapter via peft
    assert (merged / "adapter" / "adapter_config.json").is_file()
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    # the base's stored dtype (this tiny base is saved in fp32; tests/test_merge.py has a bf16 one)
    assert type(plain).__name__ == "LlamaForCausalLM" and plain.dtype == torch.float32
    assert AutoTokenizer.from_pretrained(merged).chat_template == CHAT_TEMPLATE
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, trained, atol=1e-5)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(llama_folder)(input_ids=ids).logits, trained,
                                  atol=1e-4)  # the adapter changed the answers


def test_chat_formats_the_message_with_the_template_and_streams_the_answer(tmp_path, llama_folder):
    from utils.training import train

    result = train(_config(tmp_path, llama_folder, max_steps=2), device=CPU)
    assert result.is_chat_model
    pieces = []
    answer = result.chat("Hello", max_new_tokens=8, seed=1, stream=pieces.append)
    assert "".join(pieces) == answer and len(pieces) >= 2
    hf = result.tokenizer.hf
    assert hf.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False,
                                  add_generation_prompt=True) == f"<|user|>Hello{EOS}<|assistant|>"


@requires_bitsandbytes
def test_a_qlora_adapter_is_merged_into_the_bases_stored_weights_not_its_4bit_copy(tmp_path, llama_folder, capsys):
    from transformers import AutoModelForCausalLM

    from utils.training import train

    result = train(_config(tmp_path, llama_folder, method="qlora", max_steps=4), device=CPU)
    capsys.readouterr()
    folder = export_result(result, tmp_path / "merged", merged=True)
    assert ("read from its stored fp32 weights, not the 4-bit copy it trained on, on cpu, one shard at a time; the "
            "export is a fp32 model (the base's own dtype)") in capsys.readouterr().out
    plain = AutoModelForCausalLM.from_pretrained(folder)
    assert plain.dtype == torch.float32 and not any("lora" in n for n, _ in plain.named_parameters())


def test_auto_gradient_checkpointing_turns_on_when_the_batch_fits_only_with_it(tmp_path, llama_folder, capsys):
    """A device whose memory (injected: the passes run on this CPU) holds the batch with checkpointing, not without."""
    from utils.models.adapters import enable_checkpointing
    from utils.training import train
    from utils.models.build import build_model, build_task
    from utils.training.estimate import USABLE_FRACTION, measure_memory
    from utils.precision import resolve_precision

    config = _config(tmp_path, llama_folder, max_steps=2, batch_size=8)
    decision = resolve_precision(False, "auto", CPU)
    model = build_model(config, 320, decision=decision)
    # The model's own memory (this machine's RAM also holds the process: process_bytes; an injected device does not).
    own = lambda m: m.bytes_at(8) - m.process_bytes  # noqa: E731
    without = own(measure_memory(config, decision, model, build_task(config), 320, 0))
    enable_checkpointing(model)
    with_it = own(measure_memory(config, decision, model, build_task(config), 320, 0))
    assert with_it < 0.8 * without
    small = DeviceInfo("cpu", "Small CPU", None, int((with_it + without) / 2 / USABLE_FRACTION))
    result = train(config, device=small)
    assert "Gradient checkpointing: on (auto), as batch_size=8 needs about" in capsys.readouterr().out
    assert result.model.get_base_model().is_gradient_checkpointing
    plain = train(config.replace(output_dir=str(tmp_path / "roomy")), device=CPU)
    assert not plain.model.get_base_model().is_gradient_checkpointing


def test_the_wizard_offers_the_method_recommends_one_and_its_plan_counts_the_trainable_parameters(tmp_path,
                                                                                                 llama_folder):
    """Headless wizard on a T4 (its properties injected: no GPU here)."""
    import html

    from utils.models.adapters import CHAT_MODELS
    from utils.ui.notes import method_advice
    from utils.ui.setup_wizard import SetupWizard

    t4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15 * 2**30)
    wizard = SetupWizard(config_path=tmp_path / "wizard.json", interactive=True, device=t4)
    wizard.fields["dataset_source"].input.value = "file"  # a small file: the review prepares it
    wizard.fields["dataset_path"].input.value = str(corpus_start(tmp_path / "data", 4_000))
    wizard.fields["model_source"].input.value = "pretrained"
    suggested = list(wizard.fields["pretrained_model"].input.options)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in suggested and "Qwen/Qwen2.5-7B-Instruct" in suggested  # QLoRA: fits
    assert set(suggested) <= set(CHAT_MODELS)
    wizard.fields["pretrained_model"].input.value = str(llama_folder)  # free text also allowed
    shown = {name for name, field in wizard.fields.items() if field.row.layout.display != "none"}
    assert "finetune_method" in shown and "lora_rank" not in shown  # full: no adapter settings
    wizard.fields["finetune_method"].input.value = "qlora"
    shown = {name for name, field in wizard.fields.items() if field.row.layout.display != "none"}
    assert {"lora_rank", "lora_alpha", "lora_dropout", "lora_target", "gradient_checkpointing"} <= shown
    note = html.unescape(wizard.notes["model"].value)
    assert "QLoRA: as LoRA, with the frozen model stored in 4 bits" in note
    assert "Recommended here: Full</b> for 0.00B parameters on Tesla T4" in note  # tiny: all of it trains
    # A suggested Hub model's size is known without a download (typing its name here would look it up online)
    seven = method_advice(wizard.config.replace(pretrained_model="Qwen/Qwen2.5-7B-Instruct"), wizard.device)
    assert "Recommended here: QLoRA</b> for 7.62B parameters on Tesla T4" in seven

    wizard.fields["finetune_method"].input.value = "lora"
    wizard.fields["lora_rank"].input.value = 4
    while wizard.step < 4:
        wizard.next_button.click()
    plan = html.unescape(wizard.notes["summary"].value)
    assert "fine-tuned with LoRA, rank 4: 4,096 of 43,168 parameters (9.49%) trainable" in plan
    assert wizard.config.finetune_method == "lora" and wizard.errors == {}


def test_a_gated_model_without_a_token_says_how_to_add_one(monkeypatch):
    import transformers

    from utils.data.tokenizers import load_model_tokenizer
    from utils.models.pretrained import PretrainedError

    def refused(*args, **kwargs):  # stands for the Hub refusing a gated model without a token (no network here)
        raise OSError("You are trying to access a gated repo.\nMake sure to have access to it at "
                      "https://huggingface.co/meta-llama/Llama-3.2-1B.\n401 Client Error.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refused)
    # The Hub counts as reachable (no network here): its answer is the refusal above.
    monkeypatch.setattr("utils.data.tokenizers.cached_only_source", lambda source: False)
    with pytest.raises(PretrainedError, match=r"You are trying to access a gated repo\.\). It is gated: accept its "
                                              r"license .* Colab secret named HF_TOKEN .* never prints it\.$"):
        load_model_tokenizer("meta-llama/Llama-3.2-1B", classify=False)


# bitsandbytes (imported by `import peft`) asks the `kernels` package for a Hub kernel when the CPU has AVX-512 BF16,
# which this machine's CPU lacks: the one thing emulated here is that CPU feature, before bitsandbytes loads.
AVX512_BF16_CPU = """
import importlib.util, sys, types
found = importlib.util.find_spec("bitsandbytes")
sys.modules["bitsandbytes"] = types.ModuleType("bitsandbytes")
sys.modules["bitsandbytes"].__path__ = list(found.submodule_search_locations)
import bitsandbytes.cextension as native
class AvxBf16Lib:
    def __init__(self, lib): self.lib = lib
    def __getattr__(self, name): return getattr(self.lib, name)
    def has_avx512bf16_cpu(self): return True
native.lib = AvxBf16Lib(native.lib)
del sys.modules["bitsandbytes"]  # the real package loads next, with this native library
from utils.cli import main
for argv in ARGVS:
    assert main(argv) == 0, argv
"""


@requires_bitsandbytes
def test_a_lora_run_and_its_adapter_export_print_no_library_lines_a_user_cannot_act_on(tmp_path, llama_folder):
    import os
    import subprocess
    import sys

    config = _config(tmp_path, llama_folder, max_steps=2)
    config.save(tmp_path / "config.json")
    run, export = config.output_dir, str(tmp_path / "export")
    argvs = [["--config", str(tmp_path / "config.json")], ["export", run, "--to", export],
             ["generate", export, "--chat", "Hi", "--max-new-tokens", "2", "--seed", "0"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-c", f"ARGVS = {argvs!r}\n{AVX512_BF16_CPU}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Exported" in output and "Trainable:" in output  # the three commands ran
    for noise in ("kernels-community", "gemm_4bit", "publisher trust", "is_gradient_checkpointing"):
        assert noise not in output, output[-3000:]
