"""The phase-change recipe: generated rows that only an induction head can predict
(`--synthetic_data in_context_markov`, library/synthetic.py), and the science the README's timeline
shows, asserted on the recipe's own run: a previous-token head forms in layer 0, an induction head
then forms above it, the loss on a repeated sequence falls with it, and a 1-layer model (which cannot
compose two heads) stays at chance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scratchformer.training.library.model_dir import load_tokenizer_dir
from scratchformer.training.library.pretrain_config import PretrainConfig, check_config
from scratchformer.training.library.pretraining import train
from scratchformer.training.library.synthetic import FOLLOW, SYMBOLS, in_context_markov, symbol_ids
from scratchformer.training.pretrain import build_parser

# The README's recipe, flag for flag (test_the_readme_gives_this_recipe keeps the two the same).
RECIPE = ("--synthetic_data in_context_markov --size tiny --num_attention_heads 2 --block_size 32 --vocab_size 512 "
          "--optimizer adamw --learning_rate 3e-3 --per_device_train_batch_size 32 --max_train_steps 1500 "
          "--eval_steps 50 --seed 0")
README = Path(__file__).resolve().parents[2] / "README.md"


def recipe(output_dir: Path, *more: str) -> PretrainConfig:
    (cfg,) = build_parser().parse([*RECIPE.split(), *more, "--output_dir", str(output_dir), "--report_to", "none"])
    return cfg


def test_rows_follow_a_map_of_their_own_that_no_other_row_shares():
    rows = in_context_markov(2000, 33, list(range(10, 10 + len(SYMBOLS))), seed=0, bos_token_id=1)
    assert rows.shape == (2000, 33) and (rows[:, 0] == 1).all()
    assert set(np.unique(rows[:, 1:])) == set(range(10, 10 + len(SYMBOLS)))
    assert (rows == in_context_markov(2000, 33, list(range(10, 23)), seed=0, bos_token_id=1)).all()  # seeded
    # After a symbol seen before in the row, the next one repeats what followed it then about as often
    # as two draws of "f(x) with probability a = FOLLOW + (1 - FOLLOW) / k, else another" agree:
    # a^2 + (k - 1) ((1 - FOLLOW) / k)^2 (a little more: a symbol that follows itself correlates the two) ...
    k, same, again, cross, cross_same = len(SYMBOLS), 0, 0, 0, 0
    body = rows[:, 1:]
    for r, row in enumerate(body):
        other = body[(r + 1) % len(body)]
        for t in range(1, len(row) - 1):
            earlier = np.flatnonzero(row[: t] == row[t])
            if len(earlier):
                again += 1
                same += row[earlier[-1] + 1] == row[t + 1]
            elsewhere = np.flatnonzero(other[:-1] == row[t])
            if len(elsewhere):  # ... and after the same symbol in another row, no more than chance
                cross += 1
                cross_same += other[elsewhere[0] + 1] == row[t + 1]
    expected = (FOLLOW + (1 - FOLLOW) / k) ** 2 + (k - 1) * ((1 - FOLLOW) / k) ** 2
    assert expected - 0.01 < same / again < expected + 0.03, (same / again, expected)
    assert abs(cross_same / cross - 1 / k) < 0.01, cross_same / cross


def test_symbols_are_single_tokens_of_the_runs_tokenizer(tokenizer_dir):
    tokenizer = load_tokenizer_dir(tokenizer_dir)
    ids = symbol_ids(tokenizer)
    assert len(set(ids)) == len(SYMBOLS)
    assert tokenizer.decode(ids) == SYMBOLS


def test_synthetic_data_refuses_text_flags():
    with pytest.raises(ValueError, match="--synthetic_data generates its own rows: leave out --train_files"):
        check_config(PretrainConfig(synthetic_data="in_context_markov", train_files=["a.txt"]))


def evaluations(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval_loss" in r]


def test_the_readme_gives_this_recipe():
    assert f"scratchformer pretrain {RECIPE} --output_dir runs/induction" in README.read_text()


@pytest.mark.long
def test_the_recipe_forms_an_induction_head_and_one_layer_does_not(tmp_path):
    train(recipe(tmp_path / "two"))
    two = evaluations(tmp_path / "two")
    first, last = two[0], two[-1]
    chance = 1 / len(SYMBOLS)
    # Before: no head does more than a uniform head would; nothing is gained on the repeat.
    assert first["heads_induction_max"] < 2 * chance and first["in_context_score"] < 0.1
    # After: the circuit of Olsson et al. 2022: a previous-token head in layer 0, an induction head in
    # layer 1 reading it, and the repeated half of the probe predicted from the first.
    assert last["heads_previous_token_layer"] == 0 and last["heads_previous_token_max"] > 0.7
    assert last["heads_induction_layer"] == 1 and last["heads_induction_max"] > 0.5
    assert last["in_context_score"] > 1.0
    assert last["eval_loss"] < first["eval_loss"] - 0.3  # the rows' own loss falls with it
    # The rise is a phase change, not a drift: a plateau, then 10 % to 90 % of the rise within a quarter
    # of the run (at this seed: steps 850 to 1100 of 1500).
    steps, induction = [r["step"] for r in two], [r["heads_induction_max"] for r in two]
    rise = max(induction) - induction[0]
    start = next(s for s, v in zip(steps, induction) if v >= induction[0] + 0.1 * rise)
    end = next(s for s, v in zip(steps, induction) if v >= induction[0] + 0.9 * rise)
    assert start >= 300 and end - start <= steps[-1] / 4, (start, end)

    # The same run with one layer: no head below to write each token's predecessor into its position.
    train(recipe(tmp_path / "one", "--num_hidden_layers", "1", "--tokenizer", str(tmp_path / "two" / "tokenizer")))
    one = evaluations(tmp_path / "one")
    assert max(r["heads_induction_max"] for r in one) < 2 * chance
    assert max(r["in_context_score"] for r in one) < 0.2


def test_inspect_heads_probes_a_synthetic_runs_model_with_its_letters(tmp_path, tokenizer_dir, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from scratchformer.modeling import ScratchformerConfig, ScratchformerForCausalLM
    from scratchformer.training import inspect
    from scratchformer.training.library.head_scores import head_scores
    from scratchformer.training.library.mechanisms import probe_text_ids
    from scratchformer.training.library.synthetic import trained_symbols

    tokenizer = load_tokenizer_dir(tokenizer_dir)
    torch.manual_seed(0)
    model = ScratchformerForCausalLM(ScratchformerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                                         num_attention_heads=2, max_position_embeddings=32))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert trained_symbols(tmp_path, tokenizer) is None  # no training_args.json: a text model
    (tmp_path / "training_args.json").write_text(json.dumps({"synthetic_data": "in_context_markov"}))
    letters = trained_symbols(tmp_path, tokenizer)
    assert letters == symbol_ids(tokenizer)

    assert inspect.main(["heads", "--model", str(tmp_path), "--output_file", str(tmp_path / "heads.json")]) == 0
    assert f"probed with their letters {SYMBOLS}" in capsys.readouterr().out
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    expected = head_scores(loaded, tokenizer, token_ids=letters, text_ids=probe_text_ids(loaded, tokenizer, letters))
    saved = json.loads((tmp_path / "heads.json").read_text())
    assert saved["induction"] == expected.induction and saved["previous_token"] == expected.previous_token
    assert expected.induction_period == len(SYMBOLS)  # every letter once per copy
