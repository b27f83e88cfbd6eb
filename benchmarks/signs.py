"""`make signs-benchmark`: does verbalized expert knowledge make the model answer better? Measured with
controls, over three seeds, on questions the aux text can answer.

    generate the `signs` corpus (corpora/signs.py) → annotate it once with the real OCR expert
    (jobs/signs.yaml; timed apart: the product's premise is that annotation happens once)
    → for each seed: train one model twice from `configs/train-signs.yaml`, (a) with the aux text and
      (b) with the aux input removed — only `model.use_aux` differs — side by side, one core each
    → each model answers the evaluation split (test; `--split val` while choosing a config), and the
      with-aux model also answers it with another scene's aux text (shuffled) and with the drawn sign
      texts verbalized like OCR output (oracle); both answer 300 training scenes (memorization check)
    → outputs/signs/results.json, results.md, results.png

What results.json holds (accuracies are fractions, gains / intervals / deltas are points):
    aux_answerable   count, has_text, read: with_aux, without_aux, gain_points (mean over seeds),
                     ci95 (a bootstrap over test scenes and seeds), per_seed
    reading          single-sign `read`: with/without aux, split by answers that are one token of the
                     tokenizer and answers of several tokens (made-up words, numbers)
    not_answerable   colour_of_text, read_colour: what MoAI's OCR sentence cannot say
    controls         shuffled_aux, oracle_aux (the with-aux model's aux-answerable accuracy under that
                     aux), shuffled_keeps (the fraction of the gain that survives shuffling), and
                     irrelevant_delta_points (the `shape` type, aux-irrelevant: with minus without)
    train_vs_test    per type, both arms, on 300 training scenes and on the evaluation split
    checks           no evaluation answer occurs in its own prompt; train/eval sign-text vocabularies
                     are disjoint (both must hold, or the run stops before training)
    seeds, times_s (annotate_s apart from train_eval_s), non_moai_options, targets, config_search

The runs are deterministic for a seed on one machine; the numbers change with the seed (reported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

DEFAULT_IN_MAKE_BENCH = False  # benchmarks/__main__ skips it unless named
CONFIG = Path("configs/train-signs.yaml")
DATASET = "signs"
SEEDS = (0, 1, 2)
ARMS = {"with_aux": True, "without_aux": False}
ARM_COLOURS = {"with_aux": "tab:blue", "without_aux": "tab:gray"}
TRAIN_SCORED_IMAGES = 300  # training scenes both arms answer again (memorization check)
BOOTSTRAP = 2000
# passes each arm answers: the evaluation split with its own aux text; the with-aux model also with a
# shuffled and an oracle aux text (aux-answerable questions only); both on training scenes
PASSES = {"with_aux": ("eval", "shuffled", "oracle", "train"), "without_aux": ("eval", "train")}
TARGETS = {
    "gain_points": 30.0,
    "gain_ci_low_points": 20.0,
    "reading_with_aux": 0.50,
    "reading_without_aux_max": 0.02,
    "shuffled_keeps_max": 0.20,
    "irrelevant_abs_delta_max_points": 5.0,
    "train_eval_max_s": 20 * 60,
}
# The headline trains each arm in two runs (stage_configs): reading questions first, then every type.
STAGE1 = {"types": ["read"], "steps": 500}
# Every configuration evaluated while choosing the shipped one, all on `val` (python -m benchmarks signs
# --split val), never on test. Appended by hand after each val run; results.json repeats it. Entries that
# name a branch (exp/...) ran code from experiment branches that were not kept: not in this repository.
CONFIG_SEARCH: list[dict] = [
    # full val runs: `python -m benchmarks.signs --split val --seeds 0 ...` (seed 0, both arms); accuracies
    # in %, "with/without" aux; train_eval_s as measured (the machine also ran other jobs at times: load)
    {
        "name": "c1-no-stage1",
        "changed": "configs/train-signs.yaml as committed, one run of 1000 steps on every type (--stage1-steps 0)",
        "val": {"gain": 12.9, "read": [0.0, 0.0], "has_text": [50.0, 50.2], "count": [97.2, 64.5]},
        "train_eval_s": 330,
    },
    {
        "name": "v1-stage1-read-350",
        "changed": "the committed defaults: stage 1 = 350 steps of `read` only, then 650 on every type",
        "val": {"gain": 28.8, "read": [60.2, 0.0], "has_text": [53.2, 51.5], "count": [96.8, 57.0]},
        "train_eval_s": 622,
        "note": "chosen first (the shipped defaults until v4 replaced them, see v4-3-seeds): the best val gain and "
        "the cheapest of the stage-1 runs; train time doubled by other jobs on the 2 cores (load 2.4-4.2), c1's "
        "330 s is the same number of steps",
    },
    {
        "name": "v2-aux-positions",
        "changed": "v1 + model.aux_positions=48 (learned positions on the aux tokens; not MoAI)",
        "val": {"gain": 28.4, "read": [66.5, 0.0], "has_text": [47.0, 47.2], "count": [96.5, 59.0]},
        "train_eval_s": 1346,
        "note": "one-token reading 86% (v1 78%) but multi-token still 2%; shape control +7.5 pts (target <= 5); "
        "has_text at chance; load 5.8-20 from other jobs throughout, so the time says nothing",
    },
    {
        "name": "v3-stage1-read-500",
        "changed": "v1 with stage 1 = 500 steps of `read` (then 500 on every type)",
        "val": {"gain": 24.5, "read": [71.4, 0.0], "has_text": [50.0, 50.0], "count": [86.0, 61.0]},
        "train_eval_s": 820,
        "note": "one-token reading 92%, multi-token 2%; count with aux fell to 86% (500 steps on every type are "
        "too few); load 4.8-6.0",
    },
    {
        "name": "v4-stage1-read-500-of-1150",
        "changed": "v3 with trainer.max_steps 1150 (stage 1: 500 steps of `read`, then 650 on every type, as v1)",
        "val": {"gain": 26.5, "read": [74.3, 0.0], "has_text": [48.5, 51.5], "count": [92.5, 61.0]},
        "train_eval_s": 502,
        "note": "one-token reading 96%, multi-token 4%; without has_text's noise (+-2.5 pts at 400 questions) "
        "as good as v1 but 15% more steps; shape control -4.5 pts; load 2.8-4.3",
    },
    {
        "name": "v1-seed1",
        "changed": "v1 (the chosen defaults) again with seed 1 (--seeds 1): how much one seed moves the numbers",
        "val": {"gain": 21.2, "read": [57.8, 0.0], "has_text": [47.8, 50.7], "count": [86.8, 60.2]},
        "train_eval_s": 531,
        "note": "seed 0 gave +28.8: count with aux 86.8% (seed 0: 96.8%) and has_text -3 pts; shape control +6.5 "
        "pts; CI low end 17.6; load 1.6-3.2",
    },
    # dev-loop probes (/tmp/sgdev/dev.py: with-aux model only, first-answer-token accuracy on val)
    {
        "name": "p1-has_text-only",
        "changed": "probe: 400 steps on `has_text` questions only (committed model)",
        "val": {"has_text": [50.0, None]},
        "note": "train accuracy 50.2% too: yes/no at chance, the comparison is not learned at all",
    },
    {
        "name": "p2-has_text-only-64-latents",
        "changed": "probe: as p1 with model.num_queries=64 (MoAI's 64 compressor latents)",
        "val": {"has_text": [50.0, None]},
        "note": "train 50.2%: more latents alone do not start the comparison",
    },
    # has_text-only dev-loop probes run after the headline was measured (session 5; seed 0, batch 32,
    # first-answer-token accuracy on all 400 val has_text questions). None reached 65%; none was adopted.
    *[
        {"name": name, "changed": f"probe: has_text only, {changed}", "val": {"has_text": [val, None]}}
        for name, changed, val in [
            ("p3-aux-through-llm", "600 steps, model.aux_encoder=llm", 51.0),
            ("p4-16-latents-positions", "600 steps, num_queries 16, aux_positions 48", 49.2),
            ("p5-trainable-embeddings", "600 steps, freeze_embeddings false (train 59%: memorizes)", 49.5),
            ("p6-lr2e-3", "800 steps, p4 + lr 2e-3, clip 1", 49.7),
            ("p7-latent-per-position", "800 steps, num_queries 48, aux_positions 48, depth 1, lr 2e-3", 50.0),
            ("p8-llm-256x3", "800 steps, tiny LLM width 256, 3 layers, mixer_rank 256, p6's settings", 50.0),
            ("p9-null-latent", "600 steps, an extra all-zero latent (diagnostic code patch)", 50.5),
            ("p10-aux-in-prompt", "600 steps, aux text in the prompt (diagnostic, no aux path)", 47.7),
            ("p11-aux-in-prompt-lr", "800 steps, p10 + lr 2e-3, clip 1", 50.0),
            ("p12-aux-in-prompt-2000", "2000 steps, p11 (val 50% at every 250-step check)", 48.0),
            # Session 6: a "match detector" at init (code on branch exp/has-text-match, not kept): the
            # language aux expert's Q and K start as the same scaled orthogonal map (W_q^T W_k ~ c·I), a
            # learned null "sink" latent, and the mixer reading every aux token (no compressor). 600 steps.
            (
                "p13-aux-in-prompt-identity-qk",
                "aux text in the prompt, LLM self-attention Q=K=1.5·orthogonal",
                50.2,
            ),
            (
                "p14-no-compressor-sink-identity",
                "no compressor, learned sink, aux expert Q=K=1.5·orthogonal",
                52.0,
            ),
            ("p15-p14-scale-2-sink-mid", "p14 with scale 2 and the sink starting at a middling score", 52.0),
            (
                "p16-p15-tiny-qwen2",
                "p15 with the tiny Qwen2 LLM (attention biases): learned (train 96.5%)",
                97.5,
            ),
            ("p17-tiny-qwen2-alone", "the tiny Qwen2 LLM alone, everything else committed", 50.0),
            (
                "p18-p16-with-compressor-48",
                "p16 keeping the compressor, 48 latents: word identity blurred",
                50.0,
            ),
        ]
    ],
    {
        "name": "m1-match-full-val",
        "changed": "v1 + p16's options (tiny-qwen2, no compressor, sink, identity Q/K), all types, seed 0",
        "val": {"gain": 16.6, "read": [40.8, 0.0], "has_text": [51.7, 50.2], "count": [83.2, 64.0]},
        "note": "has_text back at chance when trained with every type (its jump came after 200-400 "
        "has_text-only steps; v1's schedule starts with `read`); gain, read and count worse: not adopted. "
        "A probe with 400 has_text-first steps kept has_text at 96.5% but read one-token words 0%",
    },
    {
        "name": "m2-match-read-and-has_text-first",
        "changed": "m1 with the first 500 of 1000 steps on read and has_text (--stage1-types read,has_text "
        "--stage1-steps 500), seed 0",
        "val": {"gain": 32.0, "read": [19.9, 0.0], "has_text": [95.8, 50.0], "count": [79.2, 54.8]},
        "note": "CI +28.7 to +35.5, shape control +0.0, train+eval 338 s for 2 arms: has_text learned with "
        "every type, but reading fell to 19.9% (one-token words 25.9%): not adopted (and the branch's "
        "no-compressor path still lacks an aux mask)",
    },
    {
        "name": "h-a-m2-aux-mask",
        "changed": "m2 with an aux key mask for the raw aux tokens (padding takes no attention), seed 0 (branch exp/has-text-match)",
        "val": {"gain": 31.1, "read": [15.5, 0.0], "has_text": [91.5, 50.0], "count": [83.5, 54.8]},
        "note": "shape -1.0; the mask barely changes m2",
    },
    {
        "name": "h-b-hybrid-m2-schedule",
        "changed": "aux_compressor both (latents + raw tokens), m2's schedule, seed 0 (branch exp/has-text-match)",
        "val": {"gain": 11.2, "read": [3.9, 0.0], "has_text": [52.2, 50.0], "count": [86.0, 62.0]},
        "note": "shape -3.0",
    },
    {
        "name": "h-c-hybrid-read-350",
        "changed": "aux_compressor both, v1's schedule (read 350, then every type), seed 0 (branch exp/has-text-match)",
        "val": {"gain": 16.5, "read": [38.4, 0.0], "has_text": [54.0, 49.2], "count": [80.5, 63.5]},
        "note": "shape +8.0 (misses <= 5)",
    },
    {
        "name": "h-d-hybrid-language-3-stages",
        "changed": "both, raw tokens on the language side only; read 350, read+has_text 300, then all, seed 0 (branch exp/has-text-match)",
        "val": {"gain": 18.4, "read": [35.9, 0.0], "has_text": [51.2, 49.5], "count": [77.5, 51.5]},
        "note": "shape -7.0 (misses <= 5)",
    },
    {
        "name": "h-e-match-read-then-has_text",
        "changed": "match options (m2 + mask); read 300, read+has_text 400, then all, seed 0 (branch exp/has-text-match)",
        "val": {"gain": 27.4, "read": [70.4, 0.0], "has_text": [50.5, 49.8], "count": [83.5, 51.5]},
        "note": "one-token reading 91.8%; has_text not learned after reading",
    },
    {
        "name": "h-f-match-has_text-then-read",
        "changed": "match options (m2 + mask); has_text 400, read 300, then all, seed 0 (branch exp/has-text-match)",
        "val": {"gain": 31.5, "read": [0.0, 0.0], "has_text": [93.8, 50.0], "count": [87.8, 52.2]},
        "note": "reading 0% after has_text first; shape -2.0",
    },
    {
        "name": "pl-g-raw-latents-m2",
        "changed": "aux context per mixer layer [raw, latents] (layer 1: raw aux tokens, sink, identity Q/K; layer 2: the compressor's latents); read+has_text 500, then all, seed 0 (branch exp/per-layer-aux)",
        "val": {"gain": 15.8, "read": [11.7, 0.0], "has_text": [62.7, 50.0], "count": [80.8, 59.8]},
        "note": "shape +1.5",
    },
    {
        "name": "pl-h-latents-raw-m2",
        "changed": "per layer [latents, raw]; read+has_text 500, then all, seed 0 (branch exp/per-layer-aux)",
        "val": {"gain": 17.7, "read": [42.7, 0.0], "has_text": [50.0, 50.0], "count": [80.0, 57.5]},
        "note": "shape +2.5; a raw context in the second layer never learned has_text",
    },
    {
        "name": "pl-j-raw-latents-has_text-then-read",
        "changed": "per layer [raw, latents]; has_text 400, read 300, then all, seed 0 (branch exp/per-layer-aux)",
        "val": {"gain": 28.2, "read": [5.3, 0.0], "has_text": [92.5, 50.0], "count": [84.0, 58.2]},
        "note": "shape -2.5; latents in the last layer did not learn to read (3.4% after the read stage)",
    },
    {
        "name": "pl-k-latents-raw-read-350",
        "changed": "per layer [latents, raw]; read 350, then all, seed 0 (branch exp/per-layer-aux)",
        "val": {"gain": 15.2, "read": [25.2, 0.0], "has_text": [49.0, 48.8], "count": [81.5, 56.5]},
        "note": "shape +2.5",
    },
    {
        "name": "pl-l-3-layer-raw-latents-latents",
        "changed": "a 3-layer LLM in both arms, per layer [raw, latents, latents]; read+has_text 500, then all, seed 0 (branch exp/per-layer-aux)",
        "val": {"gain": 13.1, "read": [23.3, 0.0], "has_text": [50.2, 50.0], "count": [79.2, 58.5]},
        "note": "another model (no 3-layer baseline run), shape +0.0",
    },
    {
        "name": "pt1-passthrough-compressor",
        "changed": "probe: has_text only, 600 steps, tiny-qwen2, aux_sink, aux_attn_init identity over the "
        "compressor's latents, the compressor initialised as a pass-through mean (V = O = identity, Q = 0, "
        "feed-forward output 0; branch exp/passthrough-compressor)",
        "val": {"has_text": [50.0, None]},
        "note": "the latents are 99.7% the same across scenes: the verbalizer's fixed words and the latents' own "
        "keys dominate the mean, a sign word is ~5% of a latent, so nothing is left to match",
    },
    {
        "name": "v4-seed1",
        "changed": "v4 (stage 1: 500 steps of `read`, 1150 steps in all) with seed 1",
        "val": {"gain": 24.1, "read": [71.8, 0.0], "has_text": [45.5, 52.2], "count": [93.0, 62.7]},
        "train_eval_s": 670,
        "note": "arms one after the other on one core (--parallel 1) while a helper used the other; shape +2.0",
    },
    {
        "name": "v4-seed2",
        "changed": "v4 with seed 2",
        "val": {"gain": 28.4, "read": [74.8, 0.0], "has_text": [49.0, 50.0], "count": [96.5, 62.5]},
        "train_eval_s": 703,
        "note": "one-token reading 94.9%, multi-token 8.3%; shape -4.0; --parallel 1",
    },
    {
        "name": "v1-seed2",
        "changed": "v1 with seed 2 (the comparison with v4 over three seeds)",
        "val": {"gain": 25.8, "read": [61.7, 0.0], "has_text": [48.5, 50.2], "count": [97.2, 62.5]},
        "train_eval_s": 612,
        "note": "shape -2.0; --parallel 1",
    },
    {
        "name": "v5-seeds0-2",
        "changed": "stage 1: 420 steps of `read`, 950 steps in all (v4: 500 of 1150), seeds 0-2, --parallel 2: "
        "for margin on the 20-minute target",
        "val": {"gain": 25.1, "read": [65.0, 0.0], "has_text": [50.2, 49.9], "count": [89.8, 60.6]},
        "train_eval_s": 1092,
        "note": "per seed gain +25.8/+22.2/+27.3 (v4 +26.5/+24.1/+28.4), reading 69.4/59.2/66.5 (v4 74.3/71.8/74.8); "
        "rule written before the run: adopt if the mean gain is within 1.5 pts of v4's and reading >= 60% in "
        "every seed. Seed 1 reads 59.2%: not adopted",
    },
    {
        "name": "split-s1-split-both-layers-read-and-has_text-first",
        "changed": "configs/train-signs-split.yaml (aux_context_per_layer [split, split]: in each mixer layer the language aux expert's heads 1-2 read the masked raw aux tokens + sink with identity Q/K, heads 3-4 the 4 latents), m2's schedule (read and has_text 500 steps, then 500 on every type), seed 0 (branch exp/split-aux-heads)",
        "val": {
            "gain": 18.3,
            "read": [13.1, 0.0],
            "read_one_token": 17.1,
            "read_multi_token": 0.0,
            "has_text": [50.5, 50.0],
            "count": [96.5, 57.8],
            "shape_delta": -3.0,
            "gain_ci95": [16.0, 20.7],
        },
        "note": "Neither skill: has_text at chance (train 48.3%), reading 13.1%; count 96.5% (latents). Not adopted. train+eval 625 s for 2 arms on one core",
    },
    {
        "name": "split-s2-split-first-layer-read-first",
        "changed": "configs/train-signs-split.yaml with aux_context_per_layer [split, latents] (split in the first mixer layer only; the second reads the latents with all 4 heads, default init), v1's schedule (read 350 steps, then 650 on every type), seed 0 (branch exp/split-aux-heads)",
        "val": {
            "gain": 22.3,
            "read": [46.1, 0.0],
            "read_one_token": 60.1,
            "read_multi_token": 0.0,
            "has_text": [50.7, 51.7],
            "count": [97.2, 64.0],
            "shape_delta": 3.0,
            "gain_ci95": [19.1, 25.5],
        },
        "note": "has_text at chance; reading 46.1% (v1: 60.2%). Not adopted. train+eval 608 s for 2 arms on one core",
    },
    {
        "name": "split-s3-split-first-layer-has_text-read-all-stopped",
        "changed": "s2 config ([split, latents]), schedule has_text 400 -> read 300 -> all 300 (--stage2-types read --stage2-steps 300), seed 0 (branch exp/split-aux-heads)",
        "val": None,
        "note": "stopped in stage 1: has_text-only train loss 0.477 at step 400 (f, all raw: 0.23); the latent heads random output drowns the two match heads (split_probe.py: zeroed 0.28, silent V init 0.151 at 400). Led to the silent init of the latent heads",
    },
    {
        "name": "split-s4-split-first-layer-silent-has_text-read-all",
        "changed": "[split, latents] with the latent heads starting silent (commit 0c8e1e4), has_text 400 -> read 300 -> all 300, seed 0 (branch exp/split-aux-heads)",
        "val": {
            "gain": 30.9,
            "read": [8.7, 0.0],
            "read_one_token": 11.4,
            "read_multi_token": 0.0,
            "has_text": [92.2, 50.0],
            "count": [85.0, 54.0],
            "shape_delta": -4.5,
            "gain_ci95": [27.6, 34.1],
        },
        "note": "has_text forms in stage 1 and survives (92.2%), but reading does not start (8.7%; in the read stage the second layer's aux gate rose to 0.81, the first layer's stayed ~0.27): as j. Not adopted. train+eval 643 s for 2 arms on one core",
    },
    {
        "name": "split-s5-split-first-layer-silent-read-and-has_text-first",
        "changed": "s4 config ([split, latents], latent heads silent), m2 schedule (read and has_text 500 -> all 500), seed 0; with-aux arm only (the without-aux arm stopped to save time) (branch exp/split-aux-heads)",
        "val": {
            "gain": None,
            "read": [11.2, None],
            "read_one_token": 14.6,
            "read_multi_token": 0.0,
            "has_text": [50.0, None],
            "count": [85.8, None],
            "shape_with_aux": 49.5,
        },
        "note": "neither skill with read and has_text trained together: has_text at chance (as s1), reading 11.2%. Not adopted.",
    },
    {
        "name": "split-s6-split-first-layer-silent-read-has_text-all",
        "changed": "[split, latents], latent heads silent, read 350 -> has_text 300 -> all 350 (--stage1-types read --stage1-steps 350 --stage2-types has_text --stage2-steps 300), seed 0 (branch exp/split-aux-heads)",
        "val": {
            "gain": 20.6,
            "read": [25.7, 0.0],
            "read_one_token": 33.5,
            "read_multi_token": 0.0,
            "has_text": [50.2, 49.8],
            "count": [94.8, 56.8],
            "shape_delta": -6.5,
            "gain_ci95": [18.0, 23.4],
        },
        "note": "after the read stage (reading moved to the second layer: its aux gate 0.91) the has_text-only stage did not learn (loss 0.456 at step 300; has_text-first: 0.25 at 400): has_text at chance, reading 25.7%. Not adopted. train+eval 648 s for 2 arms on one core",
    },
    {
        "name": "split-s7-split-first-layer-silent-read-first",
        "changed": "[split, latents], latent heads silent, v1's schedule (read 350 -> all 650), seed 0 (branch exp/split-aux-heads)",
        "val": {
            "gain": 18.7,
            "read": [54.9, 0.0],
            "read_one_token": 71.5,
            "read_multi_token": 0.0,
            "has_text": [51.2, 51.7],
            "count": [83.2, 64.0],
            "shape_delta": -3.0,
            "gain_ci95": [15.5, 21.8],
        },
        "note": "reading 54.9% (target met; v1 60.2%), has_text at chance: the gain misses 30. Not adopted. train+eval 627 s for 2 arms on one core",
    },
    {
        "name": "v4-3-seeds",
        "changed": "summary of v4, v4-seed1, v4-seed2 against v1, v1-seed1, v1-seed2 (no new run)",
        "val": {"gain": 26.3, "read": [73.6, 0.0]},
        "note": "CHOSEN (the shipped defaults until v9 replaced them): mean over seeds 0-2, gain v4 26.3 vs v1 25.3 and reading with aux "
        "v4 73.6% vs v1 59.9% (every v4 seed >= 71.8%); rule fixed before seed 2's runs: adopt v4 if its mean "
        "gain is within 2 points of v1's and it reads >= 60% in every seed. 15% more steps",
    },
    # Session 11: cheaper steps for margin on the 20-minute target; rule written before each run: adopt if
    # the mean val gain over seeds 0-2 is >= 24.8 (within 1.5 of v4's 26.3), reading with aux >= 60% in
    # every seed, the shape control within 5 points and val train+eval <= 1000 s. A run stops once a seed
    # breaks the rule.
    {
        "name": "v6-one-mixer-last-layer",
        "changed": "v4 + model.mixer_every=2 (one mixer, in the second and last layer, as MoAI ends on one), seed 0",
        "val": {"gain": 18.6, "read": [53.4, 0.0], "has_text": [53.0, 51.2], "count": [81.5, 64.0]},
        "note": "train 308 s per arm against v4's ~410 (25% less); reading 53.4% < 60%: not adopted, seeds 1-2 "
        "not run; shape +1.0",
    },
    {
        "name": "v7-one-mixer-first-layer",
        "changed": "v4 + model.mixer_layers=[0] (one mixer, in the first layer), seed 0",
        "val": {"gain": 18.0, "read": [13.1, 0.0], "has_text": [54.0, 49.8], "count": [96.5, 62.2]},
        "note": "reading 13.1%: the copy needs the last layer's mixer (v6) and forms best with both; not adopted, "
        "seeds 1-2 not run; shape -7.0",
    },
    {
        "name": "v8-mixer-rank-64-seeds0-2",
        "changed": "v4 + model.mixer_rank=64 (low-rank experts, as MoAI's rank 256 of 4096), seeds 0-2, --parallel 2",
        "val": {
            "gain": 27.3,
            "read": [65.7, 0.0],
            "read_one_token": 85.2,
            "read_multi_token": 1.4,
            "has_text": [51.4, 50.6],
            "count": [91.1, 57.0],
            "shape_delta": -1.8,
            "gain_ci95": [23.0, 32.4],
        },
        "train_eval_s": 1117,
        "note": "per seed gain +32.6/+24.7/+24.7 (v4 +26.5/+24.1/+28.4; seed 0's is high because its no-aux arm "
        "counted 51.5%), reading 68.0/67.0/62.1 (v4 74.3/71.8/74.8); a step ~15% cheaper on one core, but "
        "train+eval 1,117 s > 1,000: the rule fails on time, and reading is 8 points under v4's. Not adopted",
    },
    {
        "name": "v9-mixer-rank-64-cheaper-step-seeds0-2",
        "changed": "v8 again (v4 + model.mixer_rank=64) with the cheaper step of 35040a6 (the mixer's language "
        "experts on the language tokens alone, fused AdamW), seeds 0-2, --parallel 2",
        "val": {
            "gain": 26.1,
            "read": [67.2, 0.0],
            "has_text": [49.8, 50.3],
            "count": [88.8, 57.2],
            "shape_delta": -0.7,
            "gain_ci95": [23.4, 28.6],
            "read_one_token": 86.9,
            "read_multi_token": 2.1,
        },
        "train_eval_s": 996,
        "note": "met session 11's rule, unchanged: mean gain 26.1 >= 24.8, "
        "reading 71.8/67.0/62.6 (>= 60 in every seed), shape -0.7, train+eval 996 s <= 1,000 (load 0.8 at the "
        "start, nothing else running). Per seed gain +25.9/+25.2/+27.0. Count with aux 88.8% (v4 ~94%). "
        "CHOSEN (the shipped defaults since session 13): its first test run failed on a stale stage-1 checkpoint "
        "(fixed in df68394), so test was scored once per seed from a fresh clone in session 13",
    },
    # Session 14: does a pretrained LLM bring the comparison has_text needs? SmolLM2-135M, frozen, in place
    # of the tiny LLM (`python -m benchmarks.signs_probe --preset smollm2-135m --type T --steps 400`: the
    # shipped config otherwise, so its 4 latents and plain prompt; one core each, two probes side by side,
    # ~7 s a step). Accuracy on every val question of the type, greedy answers. They ran from a one-off
    # script whose training config that command reproduces key for key.
    {
        "name": "f1-smollm2-has_text-default-init",
        "changed": "probe: has_text only, SmolLM2-135M frozen, PyTorch's default expert init (MoAI's)",
        "val": None,
        "note": "stopped at step 240 of 400: train loss at chance from step 30 on (0.32-0.44, mostly 0.34-0.38; "
        "chance is ln 2 / 2: yes or no, then EOS)",
    },
    {
        "name": "f2-smollm2-read-default-init",
        "changed": "probe: read only, SmolLM2-135M frozen, default expert init",
        "val": None,
        "note": "stopped at step 230 of 400 with f1: train loss 9.1 at step 10, 3.4-3.9 over steps 160-230",
    },
    {
        "name": "f3-smollm2-has_text-unit-init",
        "changed": "probe: has_text only, 400 steps, SmolLM2-135M frozen, --set model.expert_init=unit",
        "val": {"has_text": [52.0, None]},
        "note": "train loss at chance from step 30 on (0.33-0.51, mostly 0.34-0.38); 2,774 s of training: a pretrained LLM alone does "
        "not start the comparison through MoAI's path in 12.8k examples, as the tiny one did not (p1-p12)",
    },
    {
        "name": "f4-smollm2-read-unit-init",
        "changed": "probe: read only, 400 steps, SmolLM2-135M frozen, --set model.expert_init=unit",
        "val": {"read": [25.2, None]},
        "note": "206 val questions; train loss 1.1-1.8 over steps 340-370 (the tiny LLM's read stage: 2.4-3.2 "
        "at 370-490); numbers come out with their digits reordered (790 for 970): the order-free compressor. "
        "2,575 s of training",
    },
    # Session 15: MoAI's compressor sizes on top of v9, one change each. Rule written before any run: screen on
    # seed 0 (both arms); go on to seeds 1-2 only if the val gain is >= 27.9 (v9's seed 0 +2) and reading >= 60%;
    # adopt only if over seeds 0-2 the mean gain is >= 28.1 (v9 +2), reading >= 60% in every seed, the shape
    # control within 5 points and val train+eval <= 1,000 s. `python -m benchmarks.signs --split val --seeds 0
    # --set model.num_queries=16`, and so on. The machine ran slower this day (the same step timed 200-307 ms
    # from run to run; v9's seed-0 pair took 382 s against ~332 s a pair on session 12's day), so the times
    # below compare only with v9's rerun of the same day.
    {
        "name": "s15-v9-seed0-rerun",
        "changed": "v9 as shipped, seed 0 again: the same-day baseline for the screens below (no new config)",
        "val": {
            "gain": 25.9,
            "read": [71.8, 0.0],
            "read_one_token": 93.0,
            "read_multi_token": 2.1,
            "has_text": [48.0, 50.2],
            "count": [86.8, 56.2],
            "shape_delta": 0.5,
            "gain_ci95": [22.6, 29.3],
        },
        "train_eval_s": 382,
        "note": "the numbers v9-mixer-rank-64-cheaper-step-seeds0-2 recorded for seed 0, to the decimal (gain "
        "+25.9, reading 71.8%): the run is deterministic; the time is the day's (load 0.5 at the start)",
    },
    {
        "name": "s15-latents-16",
        "changed": "v9 + model.num_queries=16 (MoAI: 64; 4 came in with a6aaf68 without a recorded comparison), seed 0",
        "val": {
            "gain": 18.6,
            "read": [23.8, 0.0],
            "read_one_token": 31.0,
            "read_multi_token": 0.0,
            "has_text": [53.0, 50.2],
            "count": [97.0, 65.2],
            "shape_delta": 0.5,
            "gain_ci95": [15.3, 21.8],
        },
        "train_eval_s": 427,
        "note": "counts better (97.0% against v9's 86.8%) but reads far worse: the read stage's loss was 3.7 at "
        "steps 400-500 (v9 2.9), so reading forms more slowly with more latents. Screen failed; 64 latents "
        "not run (the trend is against it)",
    },
    {
        "name": "s15-latents-8",
        "changed": "v9 + model.num_queries=8, seed 0",
        "val": {
            "gain": 26.1,
            "read": [69.9, 0.0],
            "read_one_token": 90.5,
            "read_multi_token": 2.1,
            "has_text": [48.0, 51.7],
            "count": [95.8, 62.3],
            "shape_delta": -0.5,
            "gain_ci95": [22.7, 29.7],
        },
        "train_eval_s": 411,
        "note": "with aux 71.5% of aux-answerable (v9 68.3%: count 95.8% against 86.8%, reading about the same), "
        "but the arm without aux also rose, to 45.3% (v9 42.4%): the latents' random draw comes first in the "
        "model's init, so changing their number re-draws the LLM and mixers of both arms. Gain as v9's: screen "
        "failed",
    },
    {
        "name": "s15-compressor-depth-4-seeds0-2",
        "changed": "v9 + model.compressor_depth=4 (MoAI's depth), seeds 0-2 (0 as the screen, 1-2 after it passed)",
        "val": {
            "gain": 27.5,
            "read": [72.6, 0.0],
            "has_text": [48.1, 51.1],
            "count": [93.9, 59.1],
        },
        "train_eval_s": 1226,
        "note": "per seed gain +28.7/+25.1/+28.6 (v9 +25.9/+25.2/+27.0), reading 70.9/71.8/75.2, one-token "
        "words 92.4/94.3 (seeds 0 / 1-2 pooled), shape -2.0 (seed 0) and +4.3 (seeds 1-2). Mean gain 27.5 < 28.1 "
        "and train+eval 1,226 s (seed 0's pair 403 s, v9's the same day 382 s; seeds 1-2 823 s) > 1,000, over "
        "even the issue's 1,200: not adopted. MoAI's depth counts better (93.9% against v9's 88.8% on val) at "
        "a ~5% dearer step; seeds 1-2 ran for that information only, after the time was known to fail",
    },
]


# ---------------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------------


def _spawn(args: list[str], log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w", encoding="utf-8") if log else None  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT if out else None, env=_env()
    )


def _env() -> dict:
    # one thread per process (two run side by side on two cores); no tokenizer thread pools
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _wait(procs: dict[str, subprocess.Popen], logs: dict[str, Path] | None = None) -> None:
    codes = {name: p.wait() for name, p in procs.items()}
    failed = {name: rc for name, rc in codes.items() if rc}
    if failed:
        where = "; ".join(f"{n}: exit {rc}, log {logs[n] if logs else '(above)'}" for n, rc in failed.items())
        raise SystemExit(f"signs-benchmark: a step failed ({where})")


def _run_queue(jobs: list[tuple[str, list[str], Path]], parallel: int) -> dict[str, float]:
    """Run (name, args, log) jobs, `parallel` at a time; returns each job's wall seconds."""
    pending, running, seconds = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            name, args, log = pending.pop(0)
            running[name] = (_spawn(args, log), time.perf_counter(), log)
        time.sleep(0.5)
        for name, (proc, started, log) in list(running.items()):
            if proc.poll() is not None:
                if proc.returncode:
                    for other, _, _ in running.values():
                        other.kill()
                    raise SystemExit(f"signs-benchmark: {name} failed (exit {proc.returncode}), log {log}")
                seconds[name] = time.perf_counter() - started
                del running[name]
    return seconds


# ---------------------------------------------------------------------------------------------------
# the questions each model answers
# ---------------------------------------------------------------------------------------------------


def corpus_key(corpus) -> str:
    """A short hash of the generated corpus's config: its annotations live in their own warehouse, so a
    regenerated corpus (same image ids, new pictures) can never reuse another corpus's OCR."""
    stamp = (corpus.root / "annotations" / "config.json").read_text(encoding="utf-8")
    return hashlib.sha256(stamp.encode()).hexdigest()[:10]


def drawn_signs(corpus) -> dict[int, list[dict]]:
    """image_id → its signs as drawn (text, kind, bbox), from the corpus annotations."""
    signs: dict[int, list[dict]] = {}
    for split in corpus.splits:
        doc = json.loads(corpus.annotations_file(split).read_text(encoding="utf-8"))
        for image in doc["images"]:
            signs.setdefault(image["id"], [])
        for a in doc["annotations"]:
            signs[a["image_id"]].append(a)
    return signs


def oracle_aux(signs: list[dict], width: int, height: int) -> str:
    """The drawn sign texts as a perfect OCR would report them, through the same verbalizer."""
    from annotators.base import TextLine
    from verbalize.moai import verbalize

    lines = []
    for s in signs:
        x, y, w, h = s["bbox"]
        lines.append(TextLine(s["text"], 1.0, [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]))
    return verbalize({"ocr": lines}, width, height).text


def build_items(warehouse: Path, corpus, split: str) -> dict[str, list[dict]]:
    """Every pass's questions: {pass: [{sample_id, image_id, type, question, answer, image, aux}]}."""
    from corpora.signs import AUX_ANSWERABLE
    from trainer.data import load_examples
    from warehouse.store import Warehouse

    wh = Warehouse(warehouse)
    rows = load_examples(wh, DATASET, [split]).to_pylist()
    train_rows = load_examples(wh, DATASET, ["train"]).to_pylist()
    first = sorted({r["image_id"] for r in train_rows})[:TRAIN_SCORED_IMAGES]
    keep = set(first)
    train_rows = [r for r in train_rows if r["image_id"] in keep]
    signs = drawn_signs(corpus)
    sizes = {}
    for s in corpus.splits:
        for image in json.loads(corpus.annotations_file(s).read_text(encoding="utf-8"))["images"]:
            sizes[image["id"]] = (image["width"], image["height"])
    aux = {r["image_id"]: r["aux_text"] for r in rows}
    ids = sorted(aux)
    shuffled = {i: aux[ids[(k + 1) % len(ids)]] for k, i in enumerate(ids)}  # the next scene's aux text

    def item(r: dict, aux_text: str) -> dict:
        path = corpus.image_dir(r["image_split"]) / r["file_name"]
        keys = ("sample_id", "image_id", "type", "question", "answer")
        return {**{k: r[k] for k in keys}, "image": str(path), "aux": aux_text}

    answerable = [r for r in rows if r["type"] in AUX_ANSWERABLE]
    return {
        "eval": [item(r, r["aux_text"]) for r in rows],
        "shuffled": [item(r, shuffled[r["image_id"]]) for r in answerable],
        "oracle": [item(r, oracle_aux(signs[r["image_id"]], *sizes[r["image_id"]])) for r in answerable],
        "train": [item(r, r["aux_text"]) for r in train_rows],
    }


def hygiene_checks(items: dict[str, list[dict]], corpus, split: str, tokenizer, data_cfg) -> dict:
    """No evaluation answer occurs (as a word) in its own prompt, as the model sees it (template
    included); the sign texts of train and of the evaluation split share nothing."""
    from corpora.signs import TEXT_ANSWER_TYPES
    from trainer.evaluate import normalize_answer
    from trainer.inputs import format_prompt

    violations = []
    for it in items["eval"]:
        prompt = tokenizer.decode(
            format_prompt(it["question"], tokenizer, -1, data_cfg.max_prompt_tokens, data_cfg.prompt_format)
        )
        answer = normalize_answer(it["answer"])  # as the scorer compares: case, punctuation, number words
        if answer and f" {answer} " in f" {normalize_answer(prompt)} ":
            violations.append(
                {"sample_id": it["sample_id"], "question": it["question"], "answer": it["answer"]}
            )

    def texts(s: str) -> set[str]:
        doc = json.loads(corpus.annotations_file(s).read_text(encoding="utf-8"))
        return {a["text"] for a in doc["annotations"]}

    train, evaluated = texts("train"), texts(split)
    answers = {it["answer"] for it in items["eval"] if it["type"] in TEXT_ANSWER_TYPES}
    overlap = sorted((train & evaluated) | (answers & train))
    return {
        "answers_not_in_prompt": {
            "ok": not violations,
            "checked": len(items["eval"]),
            "violations": violations[:10],
        },
        "answer_vocabularies_disjoint": {
            "ok": not overlap,
            "train_sign_texts": len(train),
            f"{split}_sign_texts": len(evaluated),
            "overlap": overlap[:10],
        },
    }


# ---------------------------------------------------------------------------------------------------
# one arm: train, export, answer (a child process)
# ---------------------------------------------------------------------------------------------------


def run_arm(configs: list[Path], items_file: Path, passes: tuple[str, ...], out: Path) -> None:
    """Train from each config in turn (a later stage starts from the earlier one's weights: its
    run.init_from), export the last run, and answer every pass of `items_file`; writes out/answers.json."""
    import torch

    from trainer.evaluate import is_correct
    from trainer.export import export_run, generate_answers, load_data_config, load_exported, load_tokenizer
    from trainer.train import train

    torch.set_num_threads(1)
    started = time.perf_counter()
    for config in configs:
        run_dir = train(config)
    trained = time.perf_counter()
    exported = export_run(run_dir, out / "export")
    model, tokenizer, data_cfg = load_exported(exported), load_tokenizer(exported), load_data_config(exported)
    model.to(answering_device(yaml.safe_load(configs[-1].read_text(encoding="utf-8"))))
    items = json.loads(items_file.read_text(encoding="utf-8"))
    images: dict = {}
    answers = {}
    for name in passes:
        batch = items[name]
        use = [(i["question"], i["image"], i["aux"] if model.config.use_aux else "") for i in batch]
        predictions = generate_answers(model, use, tokenizer, data_cfg, max_new_tokens=8, images=images)
        answers[name] = [
            {"sample_id": i["sample_id"], "prediction": p, "correct": bool(is_correct(p, i["answer"]))}
            for i, p in zip(batch, predictions, strict=True)
        ]
    done = time.perf_counter()
    (out / "answers.json").write_text(
        json.dumps({"train_s": trained - started, "eval_s": done - trained, "answers": answers}),
        encoding="utf-8",
    )


# ---------------------------------------------------------------------------------------------------
# the whole benchmark
# ---------------------------------------------------------------------------------------------------


def answering_device(cfg: dict) -> str:
    """Where an arm answers: on the GPU it trained on (`trainer.accelerator` gpu, cuda or auto, with one
    present), else on the CPU as it trained (the CPU headline stays bit-identical on a GPU machine)."""
    import torch

    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto")).lower()
    return "cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"


def stage_configs(cfg: dict, stage1: dict) -> list[dict]:
    """One arm's training runs: with `stage1` ({types, steps}, steps > 0) a first run of that many steps on
    those question types only, then the rest of trainer.max_steps on every type, starting from the first
    run's weights with a fresh optimizer and schedule (run.init_from), as MoAI's step 2 starts from its
    step 1. Without it, the config as it is."""
    steps = int(stage1.get("steps") or 0)
    if not steps:
        return [cfg]
    total = int(cfg["trainer"]["max_steps"])
    if not 0 < steps < total:
        raise SystemExit(
            f"signs-benchmark: stage 1 needs 0 < steps < trainer.max_steps ({total}), not {steps}"
        )
    first, second = json.loads(json.dumps(cfg)), json.loads(json.dumps(cfg))
    first["data"]["train_types"] = list(stage1["types"])
    first["trainer"]["max_steps"] = steps
    first["run"].update({"name": cfg["run"]["name"] + "-stage1", "checkpoint_every": steps})
    second["trainer"]["max_steps"] = total - steps
    second["run"].update(
        {"checkpoint_every": total - steps, "init_from": str(Path(cfg["run"]["out"]) / first["run"]["name"])}
    )
    return [first, second]


def arm_config(base: dict, arm: str, use_aux: bool, seed: int, warehouse: Path, out: Path) -> dict:
    """The shared training config with only the aux switch, the seed and where to write changed."""
    cfg = json.loads(json.dumps(base))  # deep copy
    cfg["seed_everything"] = seed
    cfg.setdefault("model", {}).update({"use_aux": use_aux, "seed": seed})
    cfg.setdefault("data", {}).update({"dataset": DATASET, "warehouse": str(warehouse), "seed": seed})
    steps = int(cfg.get("trainer", {}).get("max_steps", 1))
    cfg.setdefault("run", {}).update(
        {"name": f"seed{seed}-{arm}", "out": str(out / "train"), "checkpoint_every": steps}
    )
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks signs", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG), help="the shared training config of both arms")
    parser.add_argument(
        "--out", default=None, help="default outputs/signs (outputs/signs-val with --split val)"
    )
    parser.add_argument(
        "--warehouse",
        default="outputs/signs-warehouse",
        help="where the corpus's annotations live, one folder per corpus config, shared by every --out",
    )
    parser.add_argument("--split", default="test", choices=("test", "val"), help="val: for choosing configs")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated")
    parser.add_argument("--parallel", type=int, default=2, help="arms trained at once (one core each)")
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps (smoke runs)")
    parser.add_argument("--set", action="append", default=[], help="override, e.g. model.mixer_rank=64")
    parser.add_argument(
        "--stage1-steps",
        type=int,
        default=STAGE1["steps"],
        help="first run's steps on --stage1-types (0: one run)",
    )
    parser.add_argument(
        "--stage1-types", default=",".join(STAGE1["types"]), help="question types of the first run"
    )
    parser.add_argument(
        "--worker", nargs=4, metavar=("CONFIG", "ITEMS", "PASSES", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        configs, items_file, passes, out = args.worker
        run_arm([Path(c) for c in configs.split(",")], Path(items_file), tuple(passes.split(",")), Path(out))
        return 0

    from corpora.resolve import resolve_corpus
    from pipeline.instructions import import_instructions
    from trainer.config import data_config, model_config, resolve_config
    from trainer.inputs import make_tokenizer
    from warehouse.store import Warehouse

    out = Path(args.out or ("outputs/signs" if args.split == "test" else "outputs/signs-val"))
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    stage1 = {"types": args.stage1_types.split(","), "steps": args.stage1_steps}
    times: dict[str, float] = {}
    load = {"start": os.getloadavg()}
    start = time.perf_counter()

    t = time.perf_counter()
    corpus = resolve_corpus(DATASET)  # generated on first use, deterministic from its seed
    times["generate_s"] = time.perf_counter() - t
    warehouse = Path(args.warehouse) / corpus_key(
        corpus
    )  # not beside --out: a new --out re-annotates nothing

    t = time.perf_counter()
    annotate = [
        sys.executable,
        "-m",
        "cli.main",
        "annotate",
        "--dataset",
        DATASET,
        "--warehouse",
        str(warehouse),
    ]
    _wait({"annotate": subprocess.Popen(annotate)})
    times["annotate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    base = resolve_config(args.config, _overrides(args.set, args.max_steps))
    import_instructions(Warehouse(warehouse), corpus)  # once here, so the runs' imports find nothing new
    items = build_items(warehouse, corpus, args.split)
    items_file = out / f"items-{args.split}.json"
    items_file.write_text(json.dumps(items), encoding="utf-8")
    mcfg = model_config(base["model"])
    data_cfg = data_config(base["data"], mcfg)
    tokenizer = make_tokenizer(data_cfg.tokenizer, mcfg)
    checks = hygiene_checks(items, corpus, args.split, tokenizer, data_cfg)
    if not all(c["ok"] for c in checks.values()):
        raise SystemExit(f"signs-benchmark: a hygiene check failed: {json.dumps(checks, indent=1)}")
    times["prepare_s"] = time.perf_counter() - t

    (out / "configs").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    jobs, configs = [], {}
    # every arm trains from nothing: an earlier run's folders (its checkpoints, metrics, export) go first,
    # so no stage can start from, and no evaluation can read, what an earlier config trained
    shutil.rmtree(out / "train", ignore_errors=True)
    shutil.rmtree(out / "arms", ignore_errors=True)
    for seed in seeds:
        for arm, use_aux in ARMS.items():
            name = f"seed{seed}-{arm}"
            cfg = configs[name] = arm_config(base, arm, use_aux, seed, warehouse, out)
            paths = []
            for k, stage in enumerate(stage_configs(cfg, stage1), start=1):
                paths.append(out / "configs" / f"{name}-run{k}.yaml")
                paths[-1].write_text(yaml.safe_dump(stage, sort_keys=False), encoding="utf-8")
            (out / "arms" / name).mkdir(parents=True, exist_ok=True)
            worker = [
                ",".join(map(str, paths)),
                str(items_file),
                ",".join(PASSES[arm]),
                str(out / "arms" / name),
            ]
            jobs.append((name, ["-m", "benchmarks.signs", "--worker", *worker], out / "logs" / f"{name}.log"))
    t = time.perf_counter()
    walls = _run_queue(jobs, args.parallel)
    times["train_eval_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - start
    load["end"] = os.getloadavg()

    runs = {}
    for name in configs:
        runs[name] = json.loads((out / "arms" / name / "answers.json").read_text(encoding="utf-8"))
        runs[name]["wall_s"] = walls[name]
    results = summarize(items, runs, seeds, args.split, tokenizer, base, times, load, checks, out, stage1)
    results["parallel"] = args.parallel
    results["ocr_coverage"] = ocr_coverage(warehouse, corpus)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (out / "results.md").write_text(results_table(results), encoding="utf-8")
    plot(results, out)
    print(results_table(results))
    print(f"written to {out}/results.json, results.md, results.png")
    return 0


def _overrides(pairs: list[str], max_steps: int | None) -> dict:
    """`--set section.key=value` (YAML values) → {section: {key: value}}."""
    overrides: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        section, _, name = key.partition(".")
        overrides.setdefault(section, {})[name] = yaml.safe_load(value)
    if max_steps is not None:
        overrides.setdefault("trainer", {})["max_steps"] = max_steps
    return overrides


# ---------------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------------


def ocr_coverage(warehouse: Path, corpus) -> dict:
    """How much of the answer text the expert delivered: drawn sign texts found verbatim in the aux text."""
    from trainer.data import load_examples
    from warehouse.store import Warehouse

    aux = {r["image_id"]: r["aux_text"] for r in load_examples(Warehouse(warehouse), DATASET).to_pylist()}
    found = total = 0
    for split in corpus.splits:
        doc = json.loads(corpus.annotations_file(split).read_text(encoding="utf-8"))
        for a in doc["annotations"]:
            total += 1
            found += a["text"] in aux.get(a["image_id"], "").replace(",", " ").replace(".", " ").split()
    return {"sign_texts": total, "read_exactly": found, "fraction": round(found / max(total, 1), 4)}


def _accuracy(answers: list[dict], keep: set[str] | None = None) -> float | None:
    rows = [a["correct"] for a in answers if keep is None or a["sample_id"] in keep]
    return round(sum(rows) / len(rows), 4) if rows else None


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def bootstrap_gain(with_correct, without_correct, counts, draws: int = BOOTSTRAP, seed: int = 0):
    """95% interval (points) of the seed-mean accuracy gain, resampling scenes and seeds with replacement.
    with_correct/without_correct: seeds × scenes correct counts; counts: questions per scene."""
    import numpy as np

    w, wo, n = (np.asarray(a, dtype=np.float64) for a in (with_correct, without_correct, counts))
    diff = w - wo
    rng = np.random.default_rng(seed)
    n_seeds, n_scenes = diff.shape
    gains = np.empty(draws)
    for b in range(draws):
        s, i = rng.integers(0, n_seeds, n_seeds), rng.integers(0, n_scenes, n_scenes)
        gains[b] = diff[s][:, i].sum() / (n_seeds * n[i].sum())
    low, high = np.percentile(100 * gains, [2.5, 97.5])
    return [round(float(low), 1), round(float(high), 1)]


def _per_scene(items: list[dict], answers: list[dict], keep: set[str]):
    """(scene ids, correct per scene, questions per scene) over the kept sample ids."""
    correct: dict[int, int] = {}
    count: dict[int, int] = {}
    image = {i["sample_id"]: i["image_id"] for i in items}
    for a in answers:
        if a["sample_id"] in keep:
            scene = image[a["sample_id"]]
            correct[scene] = correct.get(scene, 0) + a["correct"]
            count[scene] = count.get(scene, 0) + 1
    scenes = sorted(count)
    return scenes, [correct[s] for s in scenes], [count[s] for s in scenes]


def summarize(
    items, runs, seeds, split, tokenizer, base, times, load, checks, out: Path, stage1=None
) -> dict:
    import torch

    from corpora.signs import AUX_ANSWERABLE, CONTROL, NOT_ANSWERABLE

    evaluated = items["eval"]
    types = sorted({i["type"] for i in evaluated})
    of_type = {t: {i["sample_id"] for i in evaluated if i["type"] == t} for t in types}
    train_of_type = {t: {i["sample_id"] for i in items["train"] if i["type"] == t} for t in types}

    def ids(group) -> set[str]:
        return set().union(*(of_type.get(t, set()) for t in group))

    def acc(seed, arm, name, keep=None):
        return _accuracy(runs[f"seed{seed}-{arm}"]["answers"][name], keep)

    def group(keep: set[str]) -> dict:
        per_seed = []
        for s in seeds:
            a, b = acc(s, "with_aux", "eval", keep), acc(s, "without_aux", "eval", keep)
            per_seed.append({"seed": s, "with_aux": a, "without_aux": b, "gain_points": _points(a, b)})
        scenes = [_per_scene(evaluated, runs[f"seed{s}-with_aux"]["answers"]["eval"], keep) for s in seeds]
        without = [
            _per_scene(evaluated, runs[f"seed{s}-without_aux"]["answers"]["eval"], keep) for s in seeds
        ]
        w, wo = _mean([p["with_aux"] for p in per_seed]), _mean([p["without_aux"] for p in per_seed])
        return {
            "types": None,
            "questions": len(keep),
            "with_aux": w,
            "without_aux": wo,
            "gain_points": _points(w, wo),
            "ci95": bootstrap_gain([c[1] for c in scenes], [c[1] for c in without], scenes[0][2])
            if keep
            else None,
            "per_seed": per_seed,
        }

    answerable = group(ids(AUX_ANSWERABLE)) | {"types": list(AUX_ANSWERABLE)}
    not_answerable = group(ids(NOT_ANSWERABLE)) | {"types": list(NOT_ANSWERABLE)}

    # reading, split by how many tokens the answer is
    read = of_type.get("read", set())
    answer_of = {i["sample_id"]: i["answer"] for i in evaluated}
    single = {k for k in read if len(tokenizer.encode(" " + answer_of[k])) == 1}
    reading = {
        "questions": len(read),
        "with_aux": _mean([acc(s, "with_aux", "eval", read) for s in seeds]),
        "without_aux": _mean([acc(s, "without_aux", "eval", read) for s in seeds]),
    }
    for name, keep in (("single_token", single), ("multi_token", read - single)):
        reading[name] = {
            "questions": len(keep),
            "with_aux": _mean([acc(s, "with_aux", "eval", keep) for s in seeds]),
            "without_aux": _mean([acc(s, "without_aux", "eval", keep) for s in seeds]),
        }
    reading["per_seed"] = [
        {
            "seed": s,
            "with_aux": acc(s, "with_aux", "eval", read),
            "without_aux": acc(s, "without_aux", "eval", read),
        }
        for s in seeds
    ]

    shuffled = _mean([acc(s, "with_aux", "shuffled") for s in seeds])
    oracle = _mean([acc(s, "with_aux", "oracle") for s in seeds])
    control = ids(CONTROL)
    control_with = _mean([acc(s, "with_aux", "eval", control) for s in seeds])
    control_without = _mean([acc(s, "without_aux", "eval", control) for s in seeds])
    gain = answerable["gain_points"]
    controls = {
        "shuffled_aux": shuffled,
        "oracle_aux": oracle,
        "shuffled_keeps": round((_points(shuffled, answerable["without_aux"]) or 0) / gain, 3)
        if gain
        else None,
        "irrelevant_type": list(CONTROL),
        "irrelevant_with_aux": control_with,
        "irrelevant_without_aux": control_without,
        "irrelevant_delta_points": _points(control_with, control_without),
        "per_seed": [
            {
                "seed": s,
                "shuffled_aux": acc(s, "with_aux", "shuffled"),
                "oracle_aux": acc(s, "with_aux", "oracle"),
                "irrelevant_delta_points": _points(
                    acc(s, "with_aux", "eval", control), acc(s, "without_aux", "eval", control)
                ),
            }
            for s in seeds
        ],
    }
    by_type = {
        t: {
            "questions": len(of_type[t]),
            "with_aux": _mean([acc(s, "with_aux", "eval", of_type[t]) for s in seeds]),
            "without_aux": _mean([acc(s, "without_aux", "eval", of_type[t]) for s in seeds]),
        }
        for t in types
    }
    train_vs_test = {
        t: {
            "train": {arm: _mean([acc(s, arm, "train", train_of_type[t]) for s in seeds]) for arm in ARMS},
            split: {arm: by_type[t][arm] for arm in ARMS},
        }
        for t in types
    }
    runs_out = {
        name: {k: round(v, 1) for k, v in run.items() if k.endswith("_s")} for name, run in runs.items()
    }
    steps = int(base["trainer"].get("max_steps", 0))
    batch = int(base["data"].get("batch_size", 1))
    train_questions = sum(1 for _ in _train_questions(base))
    results = {
        "dataset": DATASET,
        "split": split,
        "aux_answerable": answerable,
        "reading": reading,
        "not_answerable": not_answerable,
        "controls": controls,
        "train_vs_test": train_vs_test,
        "by_type": by_type,
        "checks": checks,
        "seeds": list(seeds),
        "times_s": {**{k: round(v, 1) for k, v in times.items()}, "runs": runs_out},
        "load_average": {k: [round(x, 2) for x in v] for k, v in load.items()},
        "training": {
            "steps": steps,
            "batch_size": batch,
            "train_questions": train_questions,
            "epochs": round(steps * batch / max(1, train_questions), 2),
        },
        "stage1": stage1 or {"types": [], "steps": 0},
        "non_moai_options": non_moai_options(base, stage1),
        "config": base,
        "only_difference": "model.use_aux (true for with_aux, false for without_aux); seeds as listed",
        "config_search": {"chosen_on": "val", "tried": len(CONFIG_SEARCH), "log": CONFIG_SEARCH},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    results["targets"] = check_targets(results)
    return results


def _train_questions(base: dict):
    from corpora.resolve import resolve_corpus

    corpus = resolve_corpus(DATASET)
    for split in base["data"].get("train_splits") or corpus.splits:
        yield from json.loads((corpus.root / "annotations" / f"qa_{split}.json").read_text(encoding="utf-8"))


def _points(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(100 * (a - b), 1)


def non_moai_options(cfg: dict, stage1: dict | None = None) -> list[str]:
    """What the run does that MoAI-7B does not, read from the config (so it cannot go stale)."""
    from trainer.config import model_config
    from trainer.model import TINY_LLM, TINY_LLMS, MoAIConfig

    m = model_config(cfg["model"])
    d = cfg.get("data", {})
    moai = MoAIConfig()
    out = []
    tiny = {**TINY_LLM, **m.tiny_llm}  # the tiny LLM as trainer.model.build_llm builds it
    width = int(tiny["hidden_size"])
    if m.llm in TINY_LLMS:
        layers = tiny["num_hidden_layers"]
        out.append(
            f"LLM: a random-init {m.llm}, {layers} layers of width {width}, instead of a pretrained one"
        )
    if m.train_llm:
        out.append("train_llm: the tiny LLM's layers are trained (MoAI freezes its LLM)")
    if m.freeze_embeddings:
        out.append("freeze_embeddings: its input/output embeddings stay frozen (tied), as a real LLM's would")
    if m.vision.startswith("tiny-"):
        out.append(
            f"vision: a random-init {m.vision} (frozen) at {d.get('image_size', '?')} px instead of CLIP-L"
        )
    if m.aux_positions:
        out.append(f"aux_positions: {m.aux_positions} learned positions on the aux tokens (MoAI: none)")
    if m.aux_encoder != "embed":
        out.append(f"aux_encoder: {m.aux_encoder} (MoAI: word embeddings)")
    if m.expert_init != moai.expert_init:
        out.append(f"expert_init: {m.expert_init} (MoAI: PyTorch's default init of the experts)")
    if m.num_queries != moai.num_queries or m.compressor_depth != moai.compressor_depth:
        out.append(
            f"compressor: {m.num_queries} latents, depth {m.compressor_depth} (MoAI: 64 latents, depth 4)"
        )
    if m.llm in TINY_LLMS:
        full = ", full rank" if m.mixer_rank >= width else ""
        out.append(f"mixer_rank: {m.mixer_rank} at width {width}{full} (MoAI: rank 256 of 4096)")
    if m.mixer_layers is not None:
        out.append(f"mixer_layers: {m.mixer_layers} (MoAI: every 8th layer, the last one included)")
    elif m.mixer_every != moai.mixer_every:
        out.append(f"mixer_every: {m.mixer_every} (MoAI: every 8th layer)")
    if m.step1_steps:
        out.append(f"step1_steps: {m.step1_steps} (MoAI's step 1 then step 2 in one run, one optimizer)")
    if m.gate_top_k:
        out.append(f"gate_top_k: {m.gate_top_k} (MoAI: dense)")
    if d.get("tokenizer", "auto") not in ("auto",):
        out.append(f"tokenizer: {d['tokenizer']}")
    if d.get("prompt_format", "auto") == "plain":
        out.append('prompt_format: plain ("USER: … ASSISTANT:", MoAI\'s demo layout; no chat template)')
    if not d.get("aux_map", True):
        out.append("aux_map: off (no panoptic-map tokens)")
    if stage1 and stage1.get("steps"):
        out.append(
            f"curriculum: the first {stage1['steps']} steps train on {'/'.join(stage1['types'])} questions only, "
            "the rest on every type from those weights (fresh optimizer), in both arms"
        )
    return out


def check_targets(r: dict) -> dict:
    def entry(value, target, met):
        return {"value": value, "target": target, "met": None if value is None else bool(met)}

    a, reading, c = r["aux_answerable"], r["reading"], r["controls"]
    ci_low = a["ci95"][0] if a["ci95"] else None
    return {
        "gain_points": entry(
            a["gain_points"],
            f">= {TARGETS['gain_points']}",
            (a["gain_points"] or 0) >= TARGETS["gain_points"],
        ),
        "gain_ci_low_points": entry(
            ci_low, f">= {TARGETS['gain_ci_low_points']}", (ci_low or 0) >= TARGETS["gain_ci_low_points"]
        ),
        "reading_with_aux": entry(
            reading["with_aux"],
            f">= {TARGETS['reading_with_aux']}",
            (reading["with_aux"] or 0) >= TARGETS["reading_with_aux"],
        ),
        "reading_without_aux": entry(
            reading["without_aux"],
            f"<= {TARGETS['reading_without_aux_max']}",
            (reading["without_aux"] or 0) <= TARGETS["reading_without_aux_max"],
        ),
        "shuffled_keeps": entry(
            c["shuffled_keeps"],
            f"<= {TARGETS['shuffled_keeps_max']}",
            (c["shuffled_keeps"] or 0) <= TARGETS["shuffled_keeps_max"],
        ),
        "irrelevant_delta_points": entry(
            c["irrelevant_delta_points"],
            f"|x| <= {TARGETS['irrelevant_abs_delta_max_points']}",
            abs(c["irrelevant_delta_points"] or 0) <= TARGETS["irrelevant_abs_delta_max_points"],
        ),
        "train_eval_s": entry(
            r["times_s"].get("train_eval_s"),
            f"<= {TARGETS['train_eval_max_s']}",
            (r["times_s"].get("train_eval_s") or 0) <= TARGETS["train_eval_max_s"],
        ),
    }


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _pts(v: float | None) -> str:
    return "–" if v is None else f"{v:+.1f} pts"


def results_table(r: dict) -> str:
    a, rd, na, c = r["aux_answerable"], r["reading"], r["not_answerable"], r["controls"]
    seeds = len(r["seeds"])
    lines = [
        f"Mean over {seeds} seeds, `{r['split']}` split; 95% interval: bootstrap over scenes and seeds.",
        "",
        "| measure | questions | with aux | without aux | difference |",
        "|---|---:|---:|---:|---:|",
        f"| **aux-answerable** ({', '.join(a['types'])}) | {a['questions']} | **{_pct(a['with_aux'])}** | "
        f"**{_pct(a['without_aux'])}** | **{_pts(a['gain_points'])}** (95% CI {a['ci95'][0]:+.1f} to "
        f"{a['ci95'][1]:+.1f}) |"
        if a["ci95"]
        else f"| aux-answerable | {a['questions']} | – | – | – |",
        f"| reading (one sign) | {rd['questions']} | {_pct(rd['with_aux'])} | {_pct(rd['without_aux'])} | "
        f"{_pts(_points(rd['with_aux'], rd['without_aux']))} |",
    ]
    for name in ("single_token", "multi_token"):
        part = rd[name]
        label = "one-token words" if name == "single_token" else "multi-token words and numbers"
        lines.append(
            f"| &nbsp;&nbsp;reading: {label} | {part['questions']} | {_pct(part['with_aux'])} | "
            f"{_pct(part['without_aux'])} | {_pts(_points(part['with_aux'], part['without_aux']))} |"
        )
    lines.append(
        f"| not aux-answerable ({', '.join(na['types'])}) | {na['questions']} | {_pct(na['with_aux'])} | "
        f"{_pct(na['without_aux'])} | {_pts(na['gain_points'])} |"
    )
    for t, v in r["by_type"].items():
        lines.append(
            f"| &nbsp;&nbsp;type `{t}` | {v['questions']} | {_pct(v['with_aux'])} | {_pct(v['without_aux'])} | "
            f"{_pts(_points(v['with_aux'], v['without_aux']))} |"
        )
    lines += [
        "",
        "| control | value |",
        "|---|---:|",
        f"| shuffled aux (another scene's aux text), aux-answerable accuracy | {_pct(c['shuffled_aux'])} "
        f"(keeps {c['shuffled_keeps']:.0%} of the gain) |"
        if c["shuffled_keeps"] is not None
        else f"| shuffled aux | {_pct(c['shuffled_aux'])} |",
        f"| oracle aux (drawn texts, same verbalizer), aux-answerable accuracy | {_pct(c['oracle_aux'])} |",
        f"| aux-irrelevant type `{', '.join(c['irrelevant_type'])}`: with minus without | "
        f"{_pts(c['irrelevant_delta_points'])} |",
        "",
        "| per seed | aux-answerable with | without | gain | reading with | shuffled | oracle |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p, q, k in zip(a["per_seed"], rd["per_seed"], c["per_seed"], strict=True):
        lines.append(
            f"| {p['seed']} | {_pct(p['with_aux'])} | {_pct(p['without_aux'])} | {_pts(p['gain_points'])} | "
            f"{_pct(q['with_aux'])} | {_pct(k['shuffled_aux'])} | {_pct(k['oracle_aux'])} |"
        )
    lines += [
        "",
        "| type | train: with | train: without | " + r["split"] + ": with | " + r["split"] + ": without |",
        "|---|---:|---:|---:|---:|",
    ]
    for t, v in r["train_vs_test"].items():
        lines.append(
            f"| {t} | {_pct(v['train']['with_aux'])} | {_pct(v['train']['without_aux'])} | "
            f"{_pct(v[r['split']]['with_aux'])} | {_pct(v[r['split']]['without_aux'])} |"
        )
    tm = r["times_s"]
    lines += [
        "",
        f"Times: annotate {tm.get('annotate_s', 0):.0f} s (once; apart), train + evaluate "
        f"{tm.get('train_eval_s', 0):.0f} s ({seeds} seeds × 2 arms, {r.get('parallel', 2)} at a time), "
        f"total {tm.get('total_s', 0):.0f} s. Load average at start / end: "
        f"{r['load_average']['start'][0]:.2f} / {r['load_average']['end'][0]:.2f} on {r['machine']['cpus']} CPUs.",
        "",
        "Targets: "
        + "; ".join(
            f"{k} {v['value']} ({v['target']}): {'met' if v['met'] else 'MISSED'}"
            for k, v in r["targets"].items()
        ),
    ]
    return "\n".join(lines) + "\n"


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train_loss) rows from the run's own metrics.csv (none if the run logged nothing)."""
    import csv

    if not (run_dir / "metrics.csv").is_file():
        return []
    with open(run_dir / "metrics.csv", encoding="utf-8") as f:
        return [(int(r["step"]), float(r["train_loss"])) for r in csv.DictReader(f) if r.get("train_loss")]


def plot(results: dict, out: Path) -> None:
    """Left: accuracy by group and type, both arms (mean over seeds, one dot per seed), with the shuffled
    and oracle controls. Right: the training curves of every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.train import moving_average

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1.6, 1]})
    a = results["aux_answerable"]
    groups = [("aux-answerable", a["with_aux"], a["without_aux"])]
    groups.append(("reading", results["reading"]["with_aux"], results["reading"]["without_aux"]))
    for t, v in results["by_type"].items():
        groups.append((t, v["with_aux"], v["without_aux"]))
    width = 0.38
    for i, (arm, colour) in enumerate(ARM_COLOURS.items()):
        values = [100 * ((g[1] if arm == "with_aux" else g[2]) or 0.0) for g in groups]
        xs = [x + (i - 0.5) * width for x in range(len(groups))]
        bars.bar(xs, values, width, label=arm.replace("_", " "), color=colour)
    c = results["controls"]
    bars.scatter(
        [-0.19], [100 * (c["shuffled_aux"] or 0)], marker="v", color="tab:red", zorder=3, label="shuffled aux"
    )
    bars.scatter(
        [-0.19], [100 * (c["oracle_aux"] or 0)], marker="^", color="tab:green", zorder=3, label="oracle aux"
    )
    for p in a["per_seed"]:
        bars.scatter(
            [-0.19, 0.19],
            [100 * (p["with_aux"] or 0), 100 * (p["without_aux"] or 0)],
            color="k",
            s=8,
            zorder=4,
        )
    bars.set_xticks(range(len(groups)), [g[0] for g in groups], rotation=20, fontsize=8)
    bars.set_ylabel(f"exact-match accuracy, {results['split']} split (%)")
    bars.set_ylim(0, 105)
    bars.legend(loc="upper right", fontsize=7)
    gain, ci = a["gain_points"], a["ci95"]
    title = f"signs: aux-answerable gain {gain:+.1f} points" if gain is not None else "signs"
    if ci:
        title += f" (95% CI {ci[0]:+.1f} to {ci[1]:+.1f}), {len(results['seeds'])} seeds"
    bars.set_title(title, fontsize=10)
    for name in results["times_s"]["runs"]:
        arm = "with_aux" if name.endswith("with_aux") else "without_aux"
        first = train_losses(out / "train" / f"{name}-stage1")  # a first stage's run, if any
        offset = first[-1][0] + 1 if first else 0
        rows = first + [(step + offset, loss) for step, loss in train_losses(out / "train" / name)]
        if not rows:
            continue
        steps, losses = zip(*rows, strict=True)
        curves.plot(
            steps, moving_average(losses, max(1, len(losses) // 15)), color=ARM_COLOURS[arm], alpha=0.8
        )
    curves.set_xlabel("step")
    curves.set_ylabel("training loss (answer tokens, nats)")
    if results.get("stage1", {}).get("steps"):
        curves.axvline(results["stage1"]["steps"], color="k", lw=0.6, ls=":")
    curves.set_title("training curves, every seed (blue: with aux, grey: without)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
