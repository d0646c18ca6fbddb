"""The factlens CLI (python3 -m factlens) against the real factlens_server: every command's --json
output parsed and cross-checked between commands, readable tables, exit codes and error messages.

Usage: test_cli.py FACTLENS_SERVER PYTHON_PACKAGE_DIR
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

from support import PARIS, PROMPT, TOKEN, Server, args, write_token_file

SERVER, PACKAGE_DIR = args()
TOP = 5


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(SERVER, "--auth_token_file", write_token_file(tempfile.mkdtemp()))
        cls.locate = cls.json("locate", PROMPT, " Paris", "--top_neurons", str(TOP))

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.logs()

    @classmethod
    def run_cli(cls, *argv, token=TOKEN):
        env = dict(os.environ, PYTHONPATH=PACKAGE_DIR)
        env.pop("FACTLENS_TOKEN", None)
        if token:
            env["FACTLENS_TOKEN"] = token
        return subprocess.run([sys.executable, "-m", "factlens", "--server", cls.server.address, *argv],
                              capture_output=True, text=True, env=env, timeout=120)

    @classmethod
    def json(cls, *argv):
        out = cls.run_cli(*argv, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def test_models(self):
        (model,) = self.json("models")["models"]
        self.assertEqual(model["name"], "gpt2-facts-tiny")
        self.assertEqual(model["layers"], len(self.locate["ffn_layer_increase"]))

    def test_predict_and_locate_agree(self):
        predictions = self.json("predict", PROMPT, "--top_k", "3")["predictions"]
        self.assertEqual([int(p["id"]) for p in predictions][0], PARIS)
        self.assertEqual(len(predictions), 3)
        self.assertEqual(int(self.locate["target"]["id"]), PARIS)
        self.assertAlmostEqual(self.locate["outcome"]["prob"], predictions[0]["score"], places=9)
        self.assertEqual(len(self.locate["ffn_neurons"]), TOP)

    def test_rank_prints_every_field(self):
        (model,) = self.json("models")["models"]
        components = self.json("rank", PROMPT, " Paris", "--level", "head", "--top_k",
                               str(model["layers"] * model["heads"]))["components"]
        scores = [c["score"] for c in components]
        self.assertEqual(scores, sorted(scores, reverse=True))
        # Zero-valued fields are printed too: every head carries its layer and head, 0 included.
        self.assertEqual(sorted((c["component"]["layer"], c["component"]["head"]) for c in components),
                         [(layer, head) for layer in range(model["layers"]) for head in range(model["heads"])])
        top = self.locate["top_heads"][0]
        self.assertEqual((components[0]["component"]["layer"], components[0]["component"]["head"]),
                         (top["layer"], top["head"]))

    def test_project_trace_and_ablate_the_located_neurons(self):
        neuron = self.locate["ffn_neurons"][0]
        name = f"L{neuron['layer']}.N{neuron['neuron']}"
        projection = self.json("project", PROMPT, name + ".value", "--top_k", "4")
        self.assertEqual([t["id"] for t in projection["top"]], [t["id"] for t in neuron["top_tokens"][:4]])
        (key,) = self.json("trace", PROMPT, name)["keys"]
        self.assertEqual(len(key["layer_scores"]), 1 + 2 * len(self.locate["ffn_layer_increase"]))
        self.assertAlmostEqual(sum(key["layer_scores"]), key["total"], places=6)
        names = [f"L{n['layer']}.N{n['neuron']}" for n in self.locate["ffn_neurons"][:self.locate["ablated_ffn_neurons"]]]
        ablation = self.json("ablate", PROMPT, " Paris", *names)
        self.assertAlmostEqual(ablation["after"]["prob"], self.locate["ablated"]["prob"], places=9)
        self.assertEqual(ablation["before"]["rank"], "1")

    def test_readable_locate_report_and_html(self):
        html_path = os.path.join(tempfile.mkdtemp(), "report.html")
        out = self.run_cli("locate", PROMPT, " Paris", "--top_neurons", str(TOP), "--html", html_path)
        self.assertEqual(out.returncode, 0, out.stderr)
        neuron = self.locate["ffn_neurons"][0]
        self.assertIn(f'Target " Paris" (id {PARIS})', out.stdout)
        self.assertIn(f"L{neuron['layer']}.N{neuron['neuron']}", out.stdout)
        with open(html_path, encoding="utf-8") as f:
            self.assertIn(f"L{neuron['layer']}.N{neuron['neuron']}", f.read())

    def test_options_after_the_command(self):
        out = self.run_cli("predict", PROMPT, "--top_k", "1", "--json")
        self.assertEqual(int(json.loads(out.stdout)["predictions"][0]["id"]), PARIS)

    def test_errors_exit_1_with_code_and_message(self):
        for argv, token, code, field in [(["predict", ""], TOKEN, "INVALID_ARGUMENT", "prompt"),
                                         (["trace", PROMPT, "L0.Q1"], TOKEN, "INVALID_ARGUMENT", "component"),
                                         (["--model", "gpt-j", "predict", PROMPT], TOKEN, "NOT_FOUND", "gpt-j"),
                                         (["models"], None, "UNAUTHENTICATED", "")]:
            out = self.run_cli(*argv, token=token)
            self.assertEqual(out.returncode, 1, argv)
            self.assertIn(f"factlens: {code}: ", out.stderr)
            self.assertIn(field, out.stderr)
            self.assertEqual(out.stdout, "")
        self.assertEqual(self.run_cli("rank", PROMPT, " Paris", "--level", "NOPE").returncode, 2)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
