"""SFT data pipeline: reading SL-CAI JSONL, masking, packing, mixing, resumable batches, bad data."""

import collections
import json

import numpy as np
import pytest

from cai_jax.data.pipeline import (DataError, DataReport, Example, SFTBatches, Tokenized, epoch_order,
                                   pack_rows, read_sl_cai, tokenize_examples)
from cai_jax.tokenizer import ByteTokenizer, ChatTemplate


def _red(i, n_rounds=2):
  return {"id": f"r{i}", "prompt": f"bad {i}", "initial": "no", "kind": "red_team", "model": "m",
          "config_fingerprint": "f",
          "rounds": [{"principle": "p", "critique": "c", "revision": f"rev{i}.{r}"} for r in range(n_rounds)]}


def _helpful(i):
  return {"id": f"h{i}", "prompt": f"help {i}", "initial": f"sure {i}", "rounds": [], "kind": "helpful",
          "model": "m", "config_fingerprint": "f"}


def _write(tmp_path, records, name="d.jsonl", raw_lines=()):
  p = tmp_path / name
  p.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(l + "\n" for l in raw_lines))
  return p


def test_reads_revisions_of_every_round_and_helpful_answers(tmp_path):
  p = _write(tmp_path, [_red(0), _helpful(0), _red(1)])
  ex = read_sl_cai([p])
  assert [(e.prompt, e.response, e.kind) for e in ex] == [
      ("bad 0", "rev0.0", "revision"), ("bad 0", "rev0.1", "revision"), ("help 0", "sure 0", "helpful"),
      ("bad 1", "rev1.0", "revision"), ("bad 1", "rev1.1", "revision")]
  assert ex[1].where == f"{p}:1 round 2"
  assert [e.response for e in read_sl_cai([p], rounds="last")] == ["rev0.1", "sure 0", "rev1.1"]


def test_chat_formatting_masks_the_prompt_and_closes_the_turn():
  tok, chat = ByteTokenizer(), ChatTemplate("chatml")
  [t] = tokenize_examples([Example("hi", "yo", "revision", "x:1")], tok, chat, seq_len=64)
  prompt = tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
  assert t.n_prompt == len(prompt)
  assert t.ids.tolist() == prompt + [ord("y"), ord("o"), tok.token_to_id("<|im_end|>")]
  [t2] = tokenize_examples([Example("hi", "yo", "revision", "x:1")], tok, ChatTemplate("transcript"), 64)
  assert t2.ids.tolist()[-3:] == [ord("y"), ord("o"), tok.eos_id]  # no end-of-turn text: eos


def test_packing_layout_segments_positions_and_mask():
  items = [Tokenized(np.arange(1, 6, dtype=np.int32), 2, "revision"),  # 5 tokens, 2 prompt
           Tokenized(np.arange(11, 15, dtype=np.int32), 1, "helpful"),  # 4 tokens
           Tokenized(np.arange(21, 27, dtype=np.int32), 3, "revision")]  # 6: does not fit row 0
  out = pack_rows(items, seq_len=10, pad_id=0)
  np.testing.assert_array_equal(out["tokens"], [[1, 2, 3, 4, 5, 11, 12, 13, 14, 0],
                                                [21, 22, 23, 24, 25, 26, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1, 1, 2, 2, 2, 2, 0],
                                                     [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 3, 4, 0, 1, 2, 3, 0],
                                                   [0, 1, 2, 3, 4, 5, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["loss_mask"], [[0, 0, 1, 1, 1, 0, 1, 1, 1, 0],
                                                   [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]])
  padded = pack_rows(items, seq_len=10, pad_id=7, pack=False)
  assert padded["tokens"].shape == (3, 10) and padded["tokens"][1].tolist() == [11, 12, 13, 14] + [7] * 6


def test_mixing_ratio_cycles_the_scarcer_source():
  order = epoch_order([6, 2], [1.0, 1.0], seed=0, epoch=0)
  counts = collections.Counter(order)
  assert collections.Counter(s for s, _ in order) == {0: 6, 1: 6}
  assert all(counts[(1, j)] == 3 for j in range(2)) and all(counts[(0, j)] == 1 for j in range(6))
  order = epoch_order([6, 6], [3.0, 1.0], seed=0, epoch=0)
  assert collections.Counter(s for s, _ in order) == {0: 18, 1: 6}
  assert epoch_order([6, 6], [1.0, 0.0], 0, 0) != epoch_order([6, 6], [1.0, 0.0], 0, 1)  # reshuffled
  assert {s for s, _ in epoch_order([6, 6], [1.0, 0.0], 0, 0)} == {0}


def _batches(**kw):
  items = [Tokenized(np.full(3 + i % 4, i, np.int32), 1, "revision") for i in range(20)]
  return SFTBatches([items], [1.0], seq_len=8, batch_size=4, pad_id=0, seed=1, **kw)


def test_batches_are_deterministic_and_resume_from_their_state():
  a = _batches()
  first = [next(a) for _ in range(7)]  # crosses an epoch boundary
  assert a.rows_per_epoch < 28
  b = _batches()
  b.set_state({"next_batch": 4})
  for want in first[4:]:
    got = next(b)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  assert b.get_state() == {"next_batch": 7}


def test_each_process_reads_its_own_slice_of_the_global_batch():
  whole = next(_batches(process_index=0, process_count=1))
  p0, p1 = next(_batches(process_index=0, process_count=2)), next(_batches(process_index=1, process_count=2))
  np.testing.assert_array_equal(np.concatenate([p0["tokens"], p1["tokens"]]), whole["tokens"])


def test_empty_file_is_an_error(tmp_path):
  (tmp_path / "e.jsonl").write_text("")
  with pytest.raises(DataError, match="e.jsonl: empty file"):
    read_sl_cai([tmp_path / "e.jsonl"])


def test_malformed_line_names_file_and_line_or_is_counted(tmp_path):
  p = _write(tmp_path, [_red(0)], raw_lines=['{"id": "x", "prompt": '])
  with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
    read_sl_cai([p])
  report = DataReport()
  ex = read_sl_cai([p], on_error="skip", report=report)
  assert len(ex) == 2 and report.skipped == {"malformed_json": 1} and report.n_records == 1


def test_missing_fields_are_reported(tmp_path):
  bad_rev = _red(1)
  del bad_rev["rounds"][1]["revision"]
  no_prompt = _helpful(2)
  del no_prompt["prompt"]
  p = _write(tmp_path, [_red(0), bad_rev, no_prompt, _helpful(3)])
  with pytest.raises(DataError, match=r"d.jsonl:2: rounds\[1\]: missing or empty field 'revision'"):
    read_sl_cai([p])
  report = DataReport()
  ex = read_sl_cai([p], on_error="skip", report=report)
  assert [e.response for e in ex] == ["rev0.0", "rev0.1", "sure 3"]
  assert report.skipped == {"missing_field": 2}
  assert "d.jsonl:3: missing or empty string field 'prompt'" in report.skipped_where[1]


def test_too_long_examples_raise_or_are_counted():
  tok, chat = ByteTokenizer(), ChatTemplate("chatml")
  exs = [Example("hi", "short", "revision", "f:1"), Example("hi", "x" * 100, "revision", "f:2")]
  with pytest.raises(DataError, match=r"f:2: 1\d\d tokens .* > sft.seq_len 64"):
    tokenize_examples(exs, tok, chat, seq_len=64)
  report = DataReport()
  out = tokenize_examples(exs, tok, chat, seq_len=64, on_error="skip", report=report)
  assert len(out) == 1 and report.skipped == {"too_long": 1}
