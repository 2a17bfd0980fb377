"""Tokenizers: round trips, padding ids, the fast encode path, BPE training and caching, save/load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from utils.data.text import embedded_path
from utils.data.tokenizers import (BPE_SAMPLE_BYTES, PIECE_CHARS, ByteTokenizer, CharTokenizer, TokenizerError,
                                   build_bpe, build_tokenizer, load_pretrained, load_tokenizer,
                                   split_at_line_breaks, train_bpe)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = "héllo wörld  \n\n  x\ty = 'naïve' 🤗 café\n"
CORPUS = embedded_path("python_reference").read_text(encoding="utf-8")[:60_000] + SAMPLE


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer("bpe", CORPUS, vocab_size=400)


def word_level_json(folder: Path, words: list[str], **extra) -> Path:
    """A pretrained-style tokenizer.json built with the tokenizers library (no hub)."""
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if extra:
        data = json.loads((folder / "tokenizer.json").read_text())
        data.update(extra)
        (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder


def test_char_for_lm_is_the_sorted_characters_and_nothing_else():
    tok = build_tokenizer("char", "banana\n")
    assert tok.chars == ["\n", "a", "b", "n"] and tok.vocab_size == 4 and tok.pad_id is None
    assert tok.encode("nab\n") == [3, 1, 2, 0]


def test_char_with_pad_puts_pad_at_0_and_decode_drops_it():
    tok = build_tokenizer("char", "banana", pad=True)
    assert tok.pad_id == 0 and tok.vocab_size == 4 and tok.encode("ab") == [1, 2]
    assert tok.decode([1, 2, 0, 0]) == "ab"


def test_byte_pad_is_id_256():
    assert (ByteTokenizer().vocab_size, ByteTokenizer().pad_id) == (256, None)
    tok = ByteTokenizer(pad=True)
    assert (tok.vocab_size, tok.pad_id) == (257, 256)
    assert tok.decode(tok.encode("é") + [256]) == "é"


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_round_trip_and_fast_path_agree(kind, bpe):
    tok = bpe if kind == "bpe" else build_tokenizer(kind, CORPUS)
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE
    assert tok.encode_tensor(SAMPLE).tolist() == ids


def test_char_unknown_character_is_an_error_in_both_paths():
    tok = CharTokenizer.from_blocks(["abc"])
    for encode in (tok.encode, tok.encode_tensor):
        with pytest.raises(ValueError, match="character 'z' is not in this char tokenizer's vocabulary"):
            encode("abz")


def test_pieces_cut_at_line_breaks_encode_like_the_whole_text(bpe):
    text = CORPUS[:3 * PIECE_CHARS]
    pieces = split_at_line_breaks(text, PIECE_CHARS)
    assert len(pieces) >= 3 and "".join(pieces) == text
    assert all(p[0] == "\n" and not p[1].isspace() and not text.startswith(p) for p in pieces[1:])
    assert [i for p in pieces for i in bpe.encode(p)] == bpe.encode(text)


def test_bpe_reaches_the_target_vocab_with_pad_first(bpe):
    assert bpe.kind == "bpe" and bpe.vocab_size == 400 and bpe.pad_id == 0
    assert bpe.tokenizer.id_to_token(0) == "<pad>"
    assert len(bpe.encode(CORPUS)) < 0.6 * len(CORPUS.encode())  # merges learnt from the data


def test_bpe_is_cached_and_a_second_build_does_not_train(tmp_path, capsys):
    cache = tmp_path / "data.txt.bpe-300-abc.json"
    first = build_bpe(lambda: [CORPUS], 300, cache)
    assert cache.is_file() and "trained byte-level BPE with 300 ids" in capsys.readouterr().out
    mtime = cache.stat().st_mtime_ns

    def no_text():
        raise AssertionError("the cached tokenizer was retrained")

    second = build_bpe(no_text, 300, cache)
    assert "from cache" in capsys.readouterr().out and cache.stat().st_mtime_ns == mtime
    assert second.encode(SAMPLE) == first.encode(SAMPLE)


def test_bpe_training_is_deterministic_across_processes():
    here = train_bpe([CORPUS], 350).to_str()
    code = ("import sys; from utils.data.text import embedded_path; from utils.data.tokenizers import train_bpe; "
            f"text = embedded_path('python_reference').read_text(encoding='utf-8')[:60_000] + {SAMPLE!r}; "
            "sys.stdout.write(train_bpe([text], 350).to_str())")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    there = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert there.stdout == here


def test_bpe_on_a_large_corpus_trains_on_an_even_sample(capsys):
    blocks = [CORPUS[i: i + 20_000] for i in range(0, 60_000, 20_000)]
    build_bpe(lambda: blocks, 300, None, size_bytes=3 * BPE_SAMPLE_BYTES)
    assert "on 1 block in 3 of the text" in capsys.readouterr().out


@pytest.mark.parametrize("kind,pad", [("char", False), ("char", True), ("byte", False), ("byte", True),
                                      ("bpe", True)])
def test_load_tokenizer_reads_each_kind_back(tmp_path, kind, pad, bpe):
    tok = bpe if kind == "bpe" else build_tokenizer(kind, CORPUS, pad=pad)
    tok.save(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert (back.kind, back.vocab_size, back.pad_id) == (tok.kind, tok.vocab_size, tok.pad_id)
    assert back.encode(SAMPLE) == tok.encode(SAMPLE)


def test_pretrained_from_a_local_folder_with_its_own_pad(tmp_path):
    folder = word_level_json(tmp_path / "wl", ["[UNK]", "[PAD]", "hello", "world"])
    tok = build_tokenizer("pretrained", "", pad=True, tokenizer_path=str(folder))
    assert (tok.kind, tok.vocab_size, tok.pad_id) == ("pretrained", 4, 1)
    assert tok.encode("hello world there") == [2, 3, 0]
    tok.save(tmp_path / "saved")
    back = load_tokenizer(tmp_path / "saved")
    assert back.encode("hello world") == [2, 3] and back.pad_id == 1


def test_pretrained_byte_level_bpe_round_trips_and_finds_its_pad(tmp_path):
    (tmp_path / "gpt").mkdir()
    train_bpe([CORPUS], 320).save(str(tmp_path / "gpt" / "tokenizer.json"))
    tok = build_tokenizer("pretrained", "", pad=True, tokenizer_path=str(tmp_path / "gpt"))
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE and tok.encode_tensor(SAMPLE).tolist() == tok.encode(SAMPLE)
    assert (tok.pad_id, tok.vocab_size) == (0, 320)  # "<pad>" found by name, nothing added


def test_pretrained_without_pad_gets_one_added(tmp_path, capsys):
    folder = word_level_json(tmp_path / "gpt2ish", ["[UNK]", "hello", "world"])
    tok = load_pretrained(str(folder / "tokenizer.json"), pad=True)  # the file itself works too
    assert (tok.pad_id, tok.vocab_size) == (3, 4)
    assert "has no pad token; added '<pad>' as id 3" in capsys.readouterr().out
    assert load_pretrained(str(folder), pad=False).vocab_size == 3  # lm needs no pad: vocabulary untouched


def test_pretrained_truncation_in_the_file_is_switched_off(tmp_path):
    trunc = {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0}
    folder = word_level_json(tmp_path / "t", ["[UNK]", "[PAD]", "hello", "world"], truncation=trunc)
    tok = load_pretrained(str(folder), pad=False)
    assert tok.encode("hello world hello world") == [2, 3, 2, 3]


def test_pretrained_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="No pretrained tokenizer at .*tokenizer.json"):
        load_pretrained(str(tmp_path / "missing"), pad=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="is not a tokenizers-format tokenizer.json"):
        load_pretrained(str(tmp_path / "bad"), pad=False)


def test_pretrained_by_name_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as on a machine without it: the import fails
    with pytest.raises(TokenizerError, match=r"needs the transformers library .*pip install transformers"):
        load_pretrained("gpt2", pad=False)


def test_load_tokenizer_without_meta_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected tokenizer_meta.json"):
        load_tokenizer(tmp_path)


def test_encode_tensor_ids_fit_the_token_dtype(bpe):
    from utils.data.text import encode_blocks, token_dtype

    tokens = encode_blocks(bpe, [CORPUS[:5000], CORPUS[5000:10000]], size_hint=10)  # hint too small: grows
    assert tokens.dtype == token_dtype(400) == torch.int16
    assert tokens.tolist() == bpe.encode(CORPUS[:5000]) + bpe.encode(CORPUS[5000:10000])


def test_a_metaspace_tokenizer_encodes_large_blocks_exactly_as_whole_text():
    """T5/Llama-style tokenizer.json files mark each encoded piece's start: no piecewise encoding for them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from utils.data.tokenizers import LibraryTokenizer

    text = ("a line of text for the metaspace check\n" * 600)  # ~23k characters: several pieces
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    raw.train_from_iterator([text], trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>"]))
    tok = LibraryTokenizer(raw, "pretrained", None)
    assert tok.encode_tensor(text).tolist() == raw.encode(text, add_special_tokens=False).ids
