"""The C++ fact-localization report on gpt2-facts-tiny, checked against numpy_reference.py.

Usage: test_locate_report.py FACTLENS_LOCATE MODEL_DIR PYTHON_CLIENT_DIR
Runs `factlens_locate --json --dtype float64` for "The capital of France is" -> " Paris" and compares
every number it can recompute independently in float64 (numpy). The JSON is the server's FactReport
message in the protobuf JSON mapping (int64 fields as strings, enums by name), the schema the Python
client reads; `FactReport.from_json` must accept it unchanged. Neither side depends on the CPU's
float32 kernels: the C++ forward pass runs in float64 and its method evaluates in float64
(analysis/attribution.h), so what separates the two is the float32 rounding of the C++ trace
(2^-24 relative per tensor) — the same on every machine. Tolerances: 1e-4 absolute on log-prob
increases and query-layer scores, 1e-5 on σ, 1e-3 after ablating 100 neurons (100 removed
subvalues, each rounded to float32 in the trace). The checked-in example (a default float32 run)
is compared with the derived float32 forward bound (FLOAT32_TOLERANCE).
"""
import json
import os
import subprocess
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import numpy_reference as ref  # noqa: E402

LOCATE, MODEL_DIR, CLIENT_DIR = sys.argv[1], sys.argv[2], sys.argv[3]
IDS = [464, 3139, 286, 4881, 318]  # GPT-2 ids of "The capital of France is" (HF tokenizer)
PARIS = 6342


def float32_tolerance(config):
    """Relative bound on a float32 forward pass's error (tests/forward_parity_test.cc): 6L + 1 chained
    matrix products of at most n = max(d, d_ffn) terms, each erring by n·2^-24 of its magnitude, on
    either of two sides."""
    d = config["n_embd"]
    n = max(d, config.get("n_inner") or 4 * d)
    return 2 * (6 * config["n_layer"] + 1) * n * 2.0 ** -24


class LocateReportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        out = subprocess.run([LOCATE, "--model", MODEL_DIR, "--json", "--threads", "1", "--dtype", "float64"],
                             check=True, capture_output=True, text=True).stdout
        cls.report_text = out
        cls.report = json.loads(out)
        cls.model = ref.Gpt2(MODEL_DIR)
        cls.trace = cls.model.forward(IDS)
        cls.method = ref.Method(cls.model, cls.trace, PARIS)

    def test_prompt_target_and_prediction(self):
        r = self.report
        self.assertEqual([int(i) for i in r["input_ids"]], IDS)
        self.assertEqual(r["input_tokens"], ["The", " capital", " of", " France", " is"])
        self.assertEqual(int(r["target"]["id"]), PARIS)
        self.assertEqual(r["target"]["token"], " Paris")
        logp = ref.log_softmax(self.trace["logits"][-1])
        self.assertEqual(int(r["predictions"][0]["id"]), int(np.argmax(logp)))
        self.assertEqual(int(r["outcome"]["rank"]), 1)
        self.assertAlmostEqual(r["outcome"]["log_prob"], logp[PARIS], delta=1e-4)
        self.assertAlmostEqual(r["final_scale"], self.method.sigma, delta=1e-5)

    def test_the_python_client_reads_every_field(self):
        # One schema: the client's FactReport parses the output and writes back exactly the same JSON.
        sys.path.insert(0, CLIENT_DIR)
        from factlens.results import FactReport
        report = FactReport.from_json(self.report_text)
        self.assertEqual(report.to_dict(), self.report)
        self.assertEqual(report.prompt, "The capital of France is")
        self.assertIn("Paris", report.to_html())

    def test_layer_and_head_increases(self):
        attn, ffn = self.method.layer_increases()
        np.testing.assert_allclose(self.report["attention_layer_increase"], attn, atol=1e-4)
        np.testing.assert_allclose(self.report["ffn_layer_increase"], ffn, atol=1e-4)
        heads = self.method.head_increases()
        for h in self.report["top_heads"]:
            self.assertAlmostEqual(h["score"], heads[h["layer"], h["head"]], delta=1e-4)
        self.assertAlmostEqual(self.report["top_heads"][0]["score"], heads.max(), delta=1e-4)

    def test_top_ffn_neurons_are_the_exact_top_100(self):
        values = self.method.ffn_neurons()
        n = values.shape[1]
        order = np.argsort(-values.ravel(), kind="stable")[:100]
        reported = self.report["ffn_neurons"]
        self.assertEqual(len(reported), 100)
        for got, flat in zip(reported, order):
            self.assertAlmostEqual(got["score"], values.ravel()[flat], delta=1e-4)
            self.assertAlmostEqual(got["score"], values[got["layer"], got["neuron"]], delta=1e-4)
        self.assertEqual({(r["layer"], r["neuron"]) for r in reported[:10]},
                         {divmod(int(f), n) for f in order[:10]})
        self.assertEqual(self.report["mode"], "EXACT")
        self.assertEqual(int(self.report["ffn_total"]), values.size)
        # The top neuron's value vector (sign-corrected by its coefficient) projects onto its reported
        # top tokens.
        top = reported[0]
        proj = np.sign(top["coefficient"]) * self.method.bs(
            self.model.w[f"h.{top['layer']}.mlp.c_proj.weight"][top["neuron"]])
        self.assertEqual([int(t["id"]) for t in top["top_tokens"]], list(np.argsort(-proj)[:10]))

    def test_top_attention_neurons(self):
        values = self.method.attention_neurons()
        best = values.max()
        top = self.report["attention_neurons"][0]
        self.assertAlmostEqual(top["score"], best, delta=1e-4)
        self.assertAlmostEqual(
            top["score"], values[top["layer"], top["source_position"], top["head"], top["neuron"]], delta=1e-4)
        # Every position is shown with its token.
        self.assertEqual(top["source_token"], self.report["input_tokens"][top["source_position"]])
        for head in self.report["top_head_positions"]:
            self.assertEqual(head["source_token"], self.report["input_tokens"][head["source_position"]])
        self.assertEqual({h["source_position"] for h in self.report["top_heads"]}, {-1})

    def test_query_layers_of_top_ffn_neurons(self):
        neurons = [(r["layer"], r["neuron"], r["score"]) for r in self.report["ffn_neurons"]]
        [key_in] = [q["scores"] for q in self.report["query_layers_ffn"] if q["key_name"] == "in"]
        np.testing.assert_allclose(key_in,
                                   self.method.query_layers_ffn(neurons), atol=1e-4)

    def test_checked_in_example_is_current(self):
        # docs/examples/france-paris.json must be what the code produces today.
        path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples", "france-paris.json")
        with open(path) as f:
            example = json.load(f)
        self.assertEqual(example.keys(), self.report.keys())  # the same schema
        self.assertEqual(example["input_ids"], self.report["input_ids"])
        self.assertEqual(example["target"]["id"], self.report["target"]["id"])
        self.assertEqual([p["id"] for p in example["predictions"]], [p["id"] for p in self.report["predictions"]])
        scale = max(1.0, np.abs(self.report["ffn_layer_increase"]).max())
        np.testing.assert_allclose(example["ffn_layer_increase"], self.report["ffn_layer_increase"],
                                   atol=float32_tolerance(self.model.config) * scale)
        self.assertEqual([(n["layer"], n["neuron"]) for n in example["ffn_neurons"][:20]],
                         [(n["layer"], n["neuron"]) for n in self.report["ffn_neurons"][:20]])

    def test_ablating_top_ffn_neurons(self):
        zero = [(r["layer"], r["neuron"], len(IDS) - 1) for r in self.report["ffn_neurons"]]
        ablated = self.model.forward(IDS, zero_ffn=zero)
        logp = ref.log_softmax(ablated["logits"][-1])
        after = self.report["ablated"]
        self.assertEqual(self.report["ablated_ffn_neurons"], 100)
        self.assertAlmostEqual(after["log_prob"], logp[PARIS], delta=1e-3)
        self.assertEqual(int(after["rank"]), 1 + int((logp > logp[PARIS]).sum()))


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
