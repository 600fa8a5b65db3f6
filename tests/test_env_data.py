"""Built-in tasks and PromptDataset: determinism, disjoint splits, file formats, errors."""

import json

import gymnasium as gym
import numpy as np
import pytest

import textenv  # noqa: F401
from textenv import TASK_NAMES, PromptDataset, make_task
from textenv.tasks import ALPHABET, solve, split_of


def test_tasks_are_deterministic_and_seed_dependent():
    for name in TASK_NAMES:
        assert make_task(name, "train", 50, seed=1) == make_task(name, "train", 50, seed=1)
        assert make_task(name, "train", 50, seed=1) != make_task(name, "train", 50, seed=2)


def test_train_and_test_splits_are_disjoint():
    for name in TASK_NAMES:
        n = None if name == "continuation" else 3000
        train = {d["prompt"] for d in make_task(name, "train", n, seed=0)}
        test = {d["prompt"] for d in make_task(name, "test", None, seed=5)}
        assert train and test and not train & test
    words = {d["prompt"].split(": ")[1].strip() for d in make_task("mixed", "train", 3000)}
    assert all(split_of(w) == "train" for w in words)


def test_task_references_fit_the_default_limits():
    for name in TASK_NAMES:
        for item in make_task(name, "train"):
            assert 0 < len(item["prompt"].encode()) <= 32
            assert item["reference"] is None or len(item["reference"].encode()) + 1 <= 32
    examples = {
        "reverse": ("reverse: abcde\n", "edcba"),
        "sort": ("sort: dbca\n", "abcd"),
        "copy_edit": ("swap: abcde\n", "ebcda"),
    }
    for name, (prompt, ref) in examples.items():
        assert solve(name, prompt.split(": ")[1].strip()) == ref
    item = make_task("reverse", "train", 1)[0]
    word = item["prompt"].removeprefix("reverse: ").removesuffix("\n")
    assert set(word) <= set(ALPHABET) and 3 <= len(word) <= 8 and item["reference"] == word[::-1]
    assert all(d["reference"] is None for d in make_task("continuation", "test", 5))


def test_task_argument_errors():
    with pytest.raises(ValueError, match="known tasks"):
        make_task("revers")
    with pytest.raises(ValueError, match="known splits"):
        make_task("reverse", "valid")
    with pytest.raises(ValueError, match="continuation"):
        make_task("continuation", "test", 10**6)


def test_dataset_is_tokenized_once_left_padded():
    ds = PromptDataset(["ab", {"prompt": "abc", "reference": "x"}], max_prompt_tokens=4)
    assert ds.input_ids.tolist() == [[0, 0, 100, 101], [0, 100, 101, 102]]
    assert ds.attention_mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert ds.prompt_lengths.tolist() == [2, 3] and ds.references == [None, "x"]
    assert ds.input_ids.dtype == np.int64 and ds.attention_mask.dtype == np.int8


def test_instruction_and_messages_forms_from_json_and_jsonl(tmp_path):
    records = [
        {"instruction": "reverse", "input": "abc", "output": "cba"},
        {"instruction": "say hi", "output": "hi"},
        {"messages": [{"role": "user", "content": "sort: cab"}], "solution": "abc"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}]},
    ]  # fmt: skip
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    json_path = tmp_path / "p.json"
    json_path.write_text(json.dumps(records))
    for path in (jsonl, json_path):
        ds = PromptDataset.from_file(path)
        assert ds.prompts == ["reverse\nabc\n", "say hi\n", "sort: cab\n", "be brief\nq\n"]
        assert ds.references == ["cba", "hi", "abc", "a"]
    env = gym.make("TextRLHF-v0", prompts=str(jsonl))
    env.reset(options={"prompt": 0})
    info = env.step(1)[4]  # EOS: the episode ends and reports its prompt and reference
    assert (info["prompt"], info["reference"]) == ("reverse\nabc\n", "cba")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
        PromptDataset.from_file(path)
    path.write_text('{"prompt": "a"}\n{"prompt": ""}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: empty prompt"):
        PromptDataset.from_file(path)
    path.write_text('{"prompt": "a"}\n{"question": "b"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: unknown record keys"):
        PromptDataset.from_file(path)
    path.write_text('{"prompt": "a"}\n{"prompt": "' + "x" * 40 + '"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*40 tokens.*max_prompt_tokens=32"):
        PromptDataset.from_file(path)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"prompt": "a"},\n {"prompt": }]')
    with pytest.raises(ValueError, match=r"bad\.json:2: malformed JSON"):
        PromptDataset.from_file(bad_json)
    txt = tmp_path / "prompts.txt"
    txt.write_text("x")
    with pytest.raises(ValueError, match=r"prompts\.txt.*allowed"):
        PromptDataset.from_file(txt)


def test_deeply_nested_prompt_files_name_the_file(tmp_path):
    """Was a RecursionError traceback."""
    deep = "[" * 100_000 + "]" * 100_000
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text('{"prompt": "a"}\n{"prompt": ' + deep + "}\n")
    with pytest.raises(ValueError, match=r"deep\.jsonl:2: JSON nested more than 100 levels"):
        PromptDataset.from_file(jsonl)
    data = tmp_path / "deep.json"
    data.write_text(deep)
    with pytest.raises(ValueError, match=r"deep\.json: JSON nested more than 100 levels"):
        PromptDataset.from_file(data)


def test_a_lone_surrogate_in_a_prompt_names_the_file_and_line(tmp_path):
    """A '\\ud800' escape decodes to a str that cannot be encoded: it was a UnicodeEncodeError
    from the tokenizer, naming no file."""
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n\n{"prompt": "b\\ud800c"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:3: the prompt .* lone surrogate"):
        PromptDataset.from_file(jsonl)
    jsonl.write_text('{"prompt": "a", "reference": "\\udfff"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:1: the reference .* lone surrogate"):
        PromptDataset.from_file(jsonl)
    jsonl.write_text('{"messages": [{"role": "user", "content": "x\\ud800"}]}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:1: .* lone surrogate"):
        PromptDataset.from_file(jsonl)
    data = tmp_path / "p.json"
    data.write_text('["a", "\\ud800"]')
    with pytest.raises(ValueError, match=r"p\.json\[item 1\]: the prompt .* lone surrogate"):
        PromptDataset.from_file(data)
    with pytest.raises(ValueError, match=r"prompts\[1\]: the prompt .* lone surrogate"):
        PromptDataset(["a", "b\ud800"])
    env = gym.make("TextRLHF-v0")
    with pytest.raises(ValueError, match=r"options prompt: the prompt .* lone surrogate"):
        env.reset(options={"prompt": "\ud800"})
