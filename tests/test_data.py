"""Data: every source kind, the LM windows and their shift, classification items, splits and errors,
and a few training steps from each source through utils.training.train."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from utils.config import ConfigError, WizardConfig
from utils.data import DataError, prepare_data
from utils.data.sources import BLOCK_BYTES
from utils.data.text import embedded_path
from utils.data.tokenizers import build_tokenizer, load_tokenizer
from utils.data.spec import build_data_spec

ROOT = Path(__file__).resolve().parent.parent
CORPUS = embedded_path("python_reference").read_text(encoding="utf-8")
REVIEWS = [("a fine film", "pos"), ("dull and long", "neg"), ("", "neg"), ("loved every minute", "pos"),
           ("I want my time back", "neg"), ("sharp, funny, kind", "pos"), ("meh", "neutral"),
           ("the best this year", "pos"), ("fell asleep twice", "neg"), ("quite okay", "neutral")]


def config(tmp_path: Path, **changes) -> WizardConfig:
    base = dict(dataset_source="file", max_seq_len=32, batch_size=4, output_dir=str(tmp_path / "run"))
    return WizardConfig(**{**base, **changes})


def write_csv(path: Path, rows: list[tuple], header=("review", "sentiment")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def classification(tmp_path: Path, path: Path, **changes):
    return prepare_data(build_data_spec(config(tmp_path, task="classification", dataset_path=str(path), **changes)))


# ------------------------------------------------------------------------------------------- language model

def lm_config(tmp_path: Path, text: str, **changes) -> WizardConfig:
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return config(tmp_path, dataset_path=str(path), **changes)


def test_lm_targets_are_inputs_shifted_and_windows_tile_the_text(tmp_path):
    text = CORPUS[:20_000]
    data = prepare_data(build_data_spec(lm_config(tmp_path, text, val_split=0.2)))
    T = 32
    windows = {}
    for ds in (data.train, data.val):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == y.shape == (T,) and x.dtype == y.dtype == torch.long
            assert torch.equal(y[:-1], x[1:])  # y[t] == x[t + 1]
            windows[int(ds.starts[i])] = (x, y)
    starts = sorted(windows)
    assert starts == list(range(0, len(starts) * T, T))  # non-overlapping, no gaps
    x_all = torch.cat([windows[s][0] for s in starts])
    assert data.tokenizer.decode(x_all.tolist()) == text[: len(starts) * T]
    assert all(int(windows[s][1][-1]) == int(windows[s + T][0][0]) for s in starts[:-1])  # last target = next input
    assert data.num_tokens == len(text) and data.pad_id == 0 and data.label_names == []


def test_lm_split_is_fixed_by_the_seed(tmp_path):
    def val_starts(seed):
        return prepare_data(build_data_spec(lm_config(tmp_path, CORPUS[:20_000], seed=seed))).val.starts.tolist()

    assert val_starts(1) == val_starts(1)
    assert val_starts(1) != val_starts(2)


@pytest.mark.parametrize("strategy", ["char", "byte"])
def test_a_file_larger_than_a_block_streams_into_the_same_tokens(tmp_path, strategy):
    text = (CORPUS * (BLOCK_BYTES * 5 // 2 // len(CORPUS) + 1))[: BLOCK_BYTES * 5 // 2]  # 2.5 blocks
    data = prepare_data(build_data_spec(lm_config(tmp_path, text, tokenizer_strategy=strategy, max_seq_len=512)))
    tokens = data.train.tokens
    assert tokens.dtype == torch.uint8  # a byte-sized vocabulary stores one byte per token
    assert torch.equal(tokens, torch.tensor(build_tokenizer(strategy, text).encode(text), dtype=torch.uint8))


def test_lm_from_csv_and_jsonl_text_columns(tmp_path):
    texts = [t for t, _ in REVIEWS if t] * 20
    csv_path = write_csv(tmp_path / "r.csv", [(t, "x") for t in texts])
    jsonl_path = write_jsonl(tmp_path / "r.jsonl", [{"body": t, "n": i} for i, t in enumerate(texts)])
    expected = "".join(t + "\n" for t in texts)
    for path, column in ((csv_path, "review"), (jsonl_path, "body")):
        data = prepare_data(build_data_spec(config(tmp_path, dataset_path=str(path), text_column=column, tokenizer_strategy="byte",
                                   max_seq_len=16)))
        assert data.num_tokens == len(expected.encode())
        assert data.source == str(path)
        x, _ = data.train[0]
        assert data.tokenizer.decode(x.tolist()) in expected


def test_embedded_bpe_is_cached_under_output_dir(tmp_path, capsys):
    cfg = config(tmp_path, dataset_source="embedded", tokenizer_strategy="bpe", vocab_size=300)
    prepare_data(build_data_spec(cfg))
    cached = list((tmp_path / "run" / "data_cache").glob("python_reference.bpe-300-*.json"))
    assert len(cached) == 1 and "trained byte-level BPE" in capsys.readouterr().out
    data = prepare_data(build_data_spec(cfg))
    assert "from cache" in capsys.readouterr().out and data.tokenizer.vocab_size == 300


def test_bpe_cache_sits_beside_a_data_file_and_follows_its_content(tmp_path):
    cfg = lm_config(tmp_path, CORPUS[:30_000], tokenizer_strategy="bpe", vocab_size=300)
    prepare_data(build_data_spec(cfg))
    first = list(tmp_path.glob("corpus.txt.bpe-300-*.json"))
    (tmp_path / "corpus.txt").write_text(CORPUS[30_000:60_000], encoding="utf-8")
    prepare_data(build_data_spec(cfg))
    assert len(first) == 1 and len(list(tmp_path.glob("corpus.txt.bpe-300-*.json"))) == 2


def test_tokens_are_cached_under_output_dir_and_memory_mapped_next_time(tmp_path, capsys):
    cfg = lm_config(tmp_path, CORPUS[:20_000], tokenizer_strategy="byte")
    first = prepare_data(build_data_spec(cfg))
    cache = list((tmp_path / "run" / "data_cache").glob("corpus.tokens-*.bin"))
    assert len(cache) == 1 and cache[0].stat().st_size == first.num_tokens == len(CORPUS[:20_000].encode())
    assert "tokens from cache" not in capsys.readouterr().out
    second = prepare_data(build_data_spec(cfg))
    assert f"tokens from cache {cache[0]}" in capsys.readouterr().out
    assert torch.equal(second.train.tokens, first.train.tokens) and second.val.starts.tolist() == first.val.starts.tolist()
    prepare_data(build_data_spec(cfg.replace(tokenizer_strategy="char")))  # another tokenizer: its own cache file
    (tmp_path / "corpus.txt").write_text(CORPUS[20_000:40_000], encoding="utf-8")  # new data: new file
    third = prepare_data(build_data_spec(cfg))
    assert "tokens from cache" not in capsys.readouterr().out
    assert bytes(third.train.tokens[:50].tolist()) == CORPUS[20_000:40_000].encode()[:50]
    assert len(list((tmp_path / "run" / "data_cache").glob("corpus.tokens-*.bin"))) == 3


# ------------------------------------------------------------------------------------------- classification

def test_csv_classification_items(tmp_path, capsys):
    path = write_csv(tmp_path / "reviews.csv", REVIEWS)
    data = classification(tmp_path, path, text_column="review", label_column="sentiment", max_seq_len=8,
                          tokenizer_strategy="byte", val_split=0.25)
    assert "dropped 1 rows with empty text (line 4)" in capsys.readouterr().out
    assert data.label_names == ["neg", "neutral", "pos"] and data.num_classes == 3
    assert data.pad_id == 256 and data.tokenizer.vocab_size == 257
    assert (len(data.train), len(data.val)) == (7, 2)
    seen = {}
    for ds in (data.train, data.val):
        for i in range(len(ds)):
            ids, mask, label = ds[i]
            assert ids.shape == mask.shape == (8,) and label.shape == ()
            assert (ids.dtype, mask.dtype, label.dtype) == (torch.long, torch.bool, torch.long)
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any() and (ids[n:] == 256).all()
            seen[data.tokenizer.decode(ids[:n].tolist())] = data.label_names[int(label)]
    expected = {t.encode()[:8].decode(): lab for t, lab in REVIEWS if t}  # truncated to max_seq_len bytes
    assert seen == expected
    ids, mask, labels = next(iter(DataLoader(data.train, batch_size=4)))  # default collate
    assert ids.shape == mask.shape == (4, 8) and labels.shape == (4,)


def test_jsonl_integer_labels_sort_numerically_and_char_pads_with_0(tmp_path):
    records = [{"text": f"sample number {i}", "label": [2, 10, 1][i % 3]} for i in range(12)]
    data = classification(tmp_path, write_jsonl(tmp_path / "d.jsonl", records), tokenizer_strategy="char")
    assert data.label_names == ["1", "2", "10"] and data.pad_id == 0
    ids, mask, label = data.train[0]
    text = data.tokenizer.decode(ids.tolist())
    assert {"2": 1, "10": 2, "1": 0}[str(records[int(text.split()[-1])]["label"])] == int(label)


def test_bpe_classification_pads_with_the_pad_token(tmp_path):
    rows = [(f"{t} {i}", lab) for i in range(4) for t, lab in REVIEWS if t]
    data = classification(tmp_path, write_csv(tmp_path / "r.csv", rows), text_column="review",
                          label_column="sentiment", tokenizer_strategy="bpe", vocab_size=300)
    ids, mask, _ = data.train[0]
    assert data.pad_id == 0 and data.tokenizer.tokenizer.id_to_token(0) == "<pad>"
    assert (ids[~mask] == 0).all() and (ids[mask] != 0).all()


def test_classification_split_is_fixed_by_the_seed(tmp_path):
    path = write_csv(tmp_path / "r.csv", [(f"text {i}", i % 2) for i in range(40)], header=("text", "label"))

    def val_rows(seed):
        return classification(tmp_path, path, seed=seed).val.indices.tolist()

    assert val_rows(3) == val_rows(3) and len(val_rows(3)) == 4
    assert val_rows(3) != val_rows(4)


def test_csv_with_bom_quotes_and_multiline_cells(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,label\n\"line one\nline two, with comma\",a\nplain,b\nmore,a\nrows,b\n"
                     .encode("utf-8"))
    data = classification(tmp_path, path, tokenizer_strategy="char", val_split=0.25, max_seq_len=64)
    texts = {data.tokenizer.decode(ds[i][0].tolist()) for ds in (data.train, data.val) for i in range(len(ds))}
    assert "line one\nline two, with comma" in texts and data.label_names == ["a", "b"]


# ------------------------------------------------------------------------------------------- errors

def test_missing_file_names_the_path_and_drive(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Dataset file not found: .*nope\.txt\. Check dataset_path .*Drive"):
        prepare_data(build_data_spec(config(tmp_path, dataset_path=str(tmp_path / "nope.txt"))))


@pytest.mark.parametrize("content", [b"", b"  \n\n\t "])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"Dataset file {path} is empty"):
        prepare_data(build_data_spec(config(tmp_path, dataset_path=str(path))))


def test_undecodable_file_names_the_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match=rf"{path} is not UTF-8 text \(undecodable byte near offset 3\); save it as UTF-8"):
        prepare_data(build_data_spec(config(tmp_path, dataset_path=str(path))))
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes("text\nok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv is not UTF-8 text"):
        prepare_data(build_data_spec(config(tmp_path, dataset_path=str(csv_path))))


def test_wrong_extension_is_refused_by_the_config_and_the_reader(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match=r"has the extension '\.parquet'; use a \.txt, \.csv or \.jsonl file"):
        config(tmp_path, dataset_path=str(path)).validate()
    from utils.data.sources import check_file
    with pytest.raises(DataError, match=r"data.parquet has the extension '\.parquet'"):
        check_file(path)


def test_wrong_columns_list_the_available_ones(tmp_path):
    path = write_csv(tmp_path / "r.csv", REVIEWS)
    with pytest.raises(DataError, match=r"has no column 'text' \(text_column\); its columns are: review, sentiment"):
        prepare_data(build_data_spec(config(tmp_path, dataset_path=str(path))))
    jsonl = write_jsonl(tmp_path / "r.jsonl", [{"text": "a", "stars": 1}])
    with pytest.raises(DataError, match=r"has no column 'label' \(label_column\); its columns are: text, stars"):
        classification(tmp_path, jsonl)


def test_row_problems_name_the_row(tmp_path):
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"r.jsonl line 2 has no 'label' field; it has: text"):
        classification(tmp_path, jsonl)
    jsonl.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 1\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3 is not valid JSON"):
        classification(tmp_path, jsonl)
    path = write_csv(tmp_path / "r.csv", [("fine", "pos"), ("no label", "")])
    with pytest.raises(DataError, match=r"r.csv line 3 has no label in column 'sentiment'"):
        classification(tmp_path, path, text_column="review", label_column="sentiment")


def test_too_small_datasets_say_so(tmp_path):
    with pytest.raises(ValueError, match=r"only 1 sequences of max_seq_len=32, too few for a train/val split"):
        prepare_data(build_data_spec(lm_config(tmp_path, "x" * 40)))
    path = write_csv(tmp_path / "two.csv", [("one", "a"), ("two", "b")], header=("text", "label"))
    with pytest.raises(DataError, match=r"has 2 usable rows, too few for a train/val split at val_split=0.1"):
        classification(tmp_path, path)


def test_classification_needs_a_labelled_file(tmp_path):
    with pytest.raises(ConfigError, match="is plain text without labels"):
        config(tmp_path, task="classification", dataset_path=str(tmp_path / "a.txt")).validate()


# ------------------------------------------------------------------------------------------- Hugging Face

@pytest.fixture
def hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rows = [(t, 1 if lab == "pos" else 0) for t, lab in REVIEWS if lab != "neutral"] * 3
    ds = datasets.Dataset.from_dict({"sentence": [t for t, _ in rows], "label": [lab for _, lab in rows]},
                                    features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_hf_classification_keeps_the_class_label_names(tmp_path, hf_dataset, capsys):
    data = prepare_data(build_data_spec(config(tmp_path, task="classification", dataset_source="huggingface",
                               dataset_name=str(hf_dataset), text_column="sentence", tokenizer_strategy="char")))
    assert data.label_names == ["negative", "positive"]
    assert "dropped 3 rows with empty text" in capsys.readouterr().out
    for ds in (data.train, data.val):
        for i in range(len(ds)):
            ids, mask, label = ds[i]
            text = data.tokenizer.decode(ids[mask].tolist())
            assert {"pos": "positive", "neg": "negative"}[dict(REVIEWS)[text]] == data.label_names[int(label)]


def test_hf_lm_and_column_errors(tmp_path, hf_dataset):
    data = prepare_data(build_data_spec(config(tmp_path, dataset_source="huggingface", dataset_name=str(hf_dataset),
                               text_column="sentence", tokenizer_strategy="byte", max_seq_len=8)))
    expected = "".join(t + "\n" for t, lab in REVIEWS if lab != "neutral" and t) * 3
    assert data.num_tokens == len(expected.encode())
    with pytest.raises(DataError, match=r"has no column 'text' \(text_column\); its columns are: sentence, label"):
        prepare_data(build_data_spec(config(tmp_path, dataset_source="huggingface", dataset_name=str(hf_dataset))))


def test_hf_offline_says_so(tmp_path):
    pytest.importorskip("datasets")
    code = ("from utils.data.sources import load_hf_dataset\n"
            "try:\n    load_hf_dataset('someone/some-dataset')\n"
            "except ValueError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True).stdout
    assert "Could not reach the Hugging Face Hub for dataset 'someone/some-dataset'" in out
    assert "looks offline" in out


def test_hf_without_the_library_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as on a machine without it: `import datasets` fails
    with pytest.raises(DataError, match=r"install datasets \(pip install datasets\) to use dataset_source='huggingface'"):
        prepare_data(build_data_spec(config(tmp_path, dataset_source="huggingface", dataset_name="imdb")))


# ------------------------------------------------------------------------------------------- end to end

def small_files(tmp_path: Path) -> dict:
    text = CORPUS[:6000]
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    return {
        "txt": (tmp_path / "c.txt", lambda p: p.write_text(text, encoding="utf-8")),
        "csv": (tmp_path / "c.csv", lambda p: write_csv(p, [(q, 0) for q in paragraphs], header=("text", "id"))),
        "jsonl": (tmp_path / "c.jsonl", lambda p: write_jsonl(p, [{"text": q} for q in paragraphs])),
    }


@pytest.mark.parametrize("kind,strategy", [("txt", "char"), ("csv", "byte"), ("jsonl", "bpe")])
def test_gpt_trains_a_few_steps_from_each_file_kind(tmp_path, kind, strategy):
    from utils.training import train

    path, write = small_files(tmp_path)[kind]
    write(path)
    cfg = config(tmp_path, dataset_path=str(path), tokenizer_strategy=strategy, vocab_size=300, max_steps=3,
                 val_split=0.2, use_mixed_precision=False)
    result = train(cfg)
    assert result.global_step == 3
    losses = [loss for _, loss in result.train_history] + [result.val_loss]
    assert losses and all(math.isfinite(v) for v in losses)
    expected_vocab = {"char": len(set(CORPUS[:6000])), "byte": 256, "bpe": 300}[strategy]
    assert result.tokenizer.vocab_size == expected_vocab
    saved = load_tokenizer(Path(cfg.output_dir) / "tokenizer")
    assert saved.encode("def f():\n") == result.tokenizer.encode("def f():\n")


def test_gpt_trains_a_few_steps_from_a_hf_dataset(tmp_path, hf_dataset):
    from utils.training import train

    cfg = config(tmp_path, dataset_source="huggingface", dataset_name=str(hf_dataset), text_column="sentence",
                 tokenizer_strategy="byte", max_seq_len=8, max_steps=3, val_split=0.2, use_mixed_precision=False)
    result = train(cfg)
    assert result.global_step == 3 and math.isfinite(result.val_loss)
